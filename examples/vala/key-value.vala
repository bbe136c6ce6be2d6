/* key-value.vala: the Rust crate's own example, in Vala
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The same key/value module as key-value.c: "GetData" and "UpdateData"
 * requests, a "LogEvent" command, then a shutdown with a token. The module
 * is a Vala class implementing Spark.Handler (only the methods it needs:
 * they are virtual, with defaults) and runs on a thread of its own; the
 * client is this program's main thread, which awaits its replies with
 * `yield` on its main loop.
 *
 * Build: valac --pkg spark-channel-1 --pkg gio-2.0 key-value.vala
 */

/* The module's state is touched only by handler calls, one at a time on
 * the server's thread, so it needs no lock. */
class KeyValue : Object, Spark.Handler {
    private HashTable<string, Variant> data = new HashTable<string, Variant> (str_hash, str_equal);

    construct {
        uint32[] initial = { 1, 2 };
        data["user123"] = initial;
    }

    public Variant? handle_request (string name, Variant? parameters, Cancellable? cancellable = null) throws Error {
        if (name == "GetData" && parameters != null && parameters.is_of_type (new VariantType ("(s)"))) {
            string key;
            parameters.get ("(s)", out key);
            var values = data[key];
            if (values == null)
                throw new IOError.NOT_FOUND ("No data for “%s”", key);
            return values;
        }

        if (name == "UpdateData" && parameters != null && parameters.is_of_type (new VariantType ("(su)"))) {
            string key;
            uint32 value;
            parameters.get ("(su)", out key, out value);
            var builder = new VariantBuilder (new VariantType ("au"));
            var old = data[key];
            if (old != null) {
                foreach (var v in old)
                    builder.add_value (v);
            }
            builder.add ("u", value);
            data[key] = builder.end ();
            return true;   /* the crate's Success(true) */
        }

        throw new Spark.ChannelError.NOT_SUPPORTED ("“%s” is not a request of this module", name);
    }

    public bool handle_command (string name, Variant? parameters, Cancellable? cancellable = null) throws Error {
        if (name == "LogEvent" && parameters != null && parameters.is_of_type (new VariantType ("(s)"))) {
            string event;
            parameters.get ("(s)", out event);
            print ("module: event logged: %s\n", event);
            return true;
        }

        throw new Spark.ChannelError.NOT_SUPPORTED ("Unexpected command “%s”", name);
    }
}

/* The client's requests and command. The token is not a parameter: valac
 * makes a Cancellable parameter of an async method the cancellable of its
 * GTask, and the token is cancelled when the server stops. */
async void run_client (Spark.Dispatcher dispatcher) throws Error {
    print ("client: UpdateData(user123, 3)\n");
    var updated = yield dispatcher.request_async ("UpdateData", new Variant ("(su)", "user123", 3),
                                                  VariantType.BOOLEAN, null);
    print ("client: data updated: success=%s\n", updated.get_boolean () ? "true" : "false");

    var values = yield dispatcher.request_async ("GetData", new Variant ("(s)", "user123"),
                                                 new VariantType ("au"), null);
    print ("client: data returned for user123: %s\n", values.print (false));

    dispatcher.send_command ("LogEvent", new Variant ("(s)", "User logged in"));
    print ("client: command sent: LogEvent\n");
}

int main () {
    var server = new Spark.ModuleServer (new KeyValue ());
    server.name = "key-value";
    try {
        server.start_in_thread ();
    } catch (Error e) {
        printerr ("Could not start the module server: %s\n", e.message);
        return 1;
    }
    print ("module server 'key-value' started on its own thread\n");

    var loop = new MainLoop ();
    var dispatcher = server.create_dispatcher ();
    var token = new Cancellable ();
    Error? failure = null;

    /* Runs on the server's thread, once it has stopped. */
    token.connect (() => {
        print ("client: the module server has stopped (token cancelled)\n");
        loop.quit ();
    });

    run_client.begin (dispatcher, (obj, res) => {
        try {
            run_client.end (res);
            dispatcher.send_shutdown (token);
            print ("client: shutdown sent\n");
        } catch (Error e) {
            failure = e;
            loop.quit ();
        }
    });
    loop.run ();

    /* The server stops on the shutdown message; waiting for it here joins
     * its thread, like joining a thread. */
    var stopped = false;
    server.shutdown_async.begin (Spark.ShutdownMode.DRAIN, null, (obj, res) => {
        try {
            server.shutdown_async.end (res);
        } catch (Error e) {
        }
        stopped = true;
    });
    while (!stopped)
        MainContext.default ().iteration (true);

    if (failure != null) {
        printerr ("The client failed: %s\n", failure.message);
        return 1;
    }
    print ("done: the module server's thread has ended\n");
    return 0;
}
