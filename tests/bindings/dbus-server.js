// dbus-server.js: a module written in JavaScript, exported on a bus
//
// SPDX-License-Identifier: LGPL-2.1-or-later
//
// Run by tests/test-dbus.c (/spark/dbus/bus/gjs-server) as
// `gjs -m dbus-server.js ADDRESS`. Serves a JavaScript handler on the main
// context (the only one GJS can run it on), exports it at
// /org/gnome/SparkChannel/Test, prints its connection's unique name, then
// one line per command; exits 0 once a remote Shutdown stopped the server.

import GLib from 'gi://GLib';
import Gio from 'gi://Gio';
import GObject from 'gi://GObject';
import Spark from 'gi://Spark?version=1.0';
import System from 'system';

const [address] = ARGV;
// Unbuffered: the C test reads each line as it comes.
const out = new Gio.DataOutputStream({base_stream: new Gio.UnixOutputStream({fd: 1, close_fd: false})});
const say = line => out.put_string(`${line}\n`, null);

const Greeter = GObject.registerClass({
    Implements: [Spark.Handler],
}, class Greeter extends GObject.Object {
    vfunc_handle_invocation(invocation) {
        const parameters = invocation.get_parameters();
        switch (invocation.get_name()) {
        case 'greet':
            if (parameters === null)
                invocation.return_error_literal(Spark.channel_error_quark(), Spark.ChannelError.NOT_SUPPORTED,
                    'greet needs a name');
            else
                invocation.return_value(new GLib.Variant('s', `Hello, ${parameters.unpack()}, from GJS`));
            break;
        case 'fail':
            invocation.return_error_literal(Gio.io_error_quark(), Gio.IOErrorEnum.PERMISSION_DENIED,
                'not from JavaScript');
            break;
        case 'later':
            // Completed later, from a Promise.
            Promise.resolve(parameters.unpack() + 1).then(n => invocation.return_value(new GLib.Variant('i', n)));
            break;
        default:
            invocation.return_error_literal(Spark.channel_error_quark(), Spark.ChannelError.NOT_SUPPORTED,
                `no request “${invocation.get_name()}” here`);
        }
    }

    vfunc_handle_command(name, parameters) {
        say(`${name}: ${parameters ? parameters.unpack() : ''}`);
        return true;
    }
});

const loop = new GLib.MainLoop(null, false);
const conn = Gio.DBusConnection.new_for_address_sync(address,
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
    null, null);
const server = new Spark.ModuleServer({handler: new Greeter()});
server.start(null);
server.export(conn, '/org/gnome/SparkChannel/Test');
server.connect('notify::running', () => {
    if (!server.running)
        loop.quit();
});
say(conn.get_unique_name());
loop.run();
server.unexport(conn, '/org/gnome/SparkChannel/Test');
conn.flush_sync(null);
System.exit(0);
