/* test-vala.vala: spark-channel from Vala, through the generated vapi
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The vfuncs of Spark.Handler are virtual in the vapi (see
 * gir/Spark-1.0.metadata): a Vala class implements only the ones it needs,
 * and the others keep their C defaults. Errors are Vala error domains;
 * async calls are `async` methods.
 */

const int WATCHDOG_SECONDS = 10;

void iterate_until (ref bool done) {
    var expired = false;
    var watchdog = Timeout.add_seconds (WATCHDOG_SECONDS, () => {
        expired = true;
        return Source.REMOVE;
    });
    while (!done && !expired)
        MainContext.default ().iteration (true);
    if (!expired)
        Source.remove (watchdog);
    assert_true (done);
}

void assert_error (Error? e, Quark domain, int code) {
    assert_true (e != null);
    if (!e.matches (domain, code))
        error ("expected %s %d, got %s %d: %s",
               domain.to_string (), code, e.domain.to_string (), e.code, e.message);
}

/* Waits for request_async on the default context. */
Variant? request (Spark.Dispatcher dispatcher, string name, Variant? parameters = null,
                  VariantType? reply_type = null, Cancellable? cancellable = null) throws Error {
    Variant? reply = null;
    Error? failure = null;
    var done = false;

    dispatcher.request_async.begin (name, parameters, reply_type, cancellable, (obj, res) => {
        try {
            reply = dispatcher.request_async.end (res);
        } catch (Error e) {
            failure = e;
        }
        done = true;
    });
    assert_false (done);   /* never inside the call */
    iterate_until (ref done);

    if (failure != null)
        throw failure.copy ();
    return reply;
}

void shutdown (Spark.ModuleServer server, Spark.ShutdownMode mode = Spark.ShutdownMode.DRAIN) {
    var done = false;
    server.shutdown_async.begin (mode, null, (obj, res) => {
        try {
            assert_true (server.shutdown_async.end (res));
        } catch (Error e) {
            error ("shutdown failed: %s", e.message);
        }
        done = true;
    });
    iterate_until (ref done);
    assert_false (server.running);
}

/* Implements requests and commands; handle_invocation keeps its default. */
class SyncHandler : Object, Spark.Handler {
    public string[] commands = {};

    public Variant? handle_request (string name, Variant? parameters, Cancellable? cancellable = null) throws Error {
        switch (name) {
        case "Int":
            return new Variant.int32 (42);
        case "Null":
            return null;
        case "Fail":
            throw new IOError.NOT_FOUND ("No data for “user123”");
        case "Echo":
            return parameters ?? new Variant.string ("no parameters");
        default:
            throw new Spark.ChannelError.NOT_SUPPORTED ("“%s” is not a request of this module", name);
        }
    }

    public bool handle_command (string name, Variant? parameters, Cancellable? cancellable = null) throws Error {
        commands += name;
        if (name == "FailCommand")
            throw new IOError.NO_SPACE ("The event log is full");
        return true;
    }
}

/* Implements nothing: possible only because the methods are virtual. */
class EmptyHandler : Object, Spark.Handler {
}

/* Replies later: keeps the invocations. */
class LaterHandler : Object, Spark.Handler {
    public GenericArray<Spark.Invocation> held = new GenericArray<Spark.Invocation> ();

    public void handle_invocation (Spark.Invocation invocation) {
        held.add (invocation);
    }
}

void test_sync_handler_in_thread () {
    var handler = new SyncHandler ();
    var server = new Spark.ModuleServer (handler);
    server.name = "vala-thread";
    try {
        server.start_in_thread ();
        var dispatcher = server.create_dispatcher ();

        assert_cmpint (dispatcher.request_sync ("Int", null, null).get_int32 (), CompareOperator.EQ, 42);
        assert_cmpstr (dispatcher.request_sync ("Echo", null, VariantType.STRING).get_string (),
                       CompareOperator.EQ, "no parameters");
        var reply = request (dispatcher, "Echo", new Variant ("(su)", "user123", 7));
        assert_cmpstr (reply.print (false), CompareOperator.EQ, "('user123', 7)");

        assert_true (dispatcher.send_command ("LogEvent", null));
        assert_true (dispatcher.try_send_command ("LogEvent", null));
        dispatcher.request_sync ("Int", null, null);
        assert_cmpint (handler.commands.length, CompareOperator.EQ, 2);
    } catch (Error e) {
        error ("%s", e.message);
    }
    shutdown (server);
}

void test_defaults_not_supported () {
    var server = new Spark.ModuleServer (new EmptyHandler ());
    var failures = 0;
    server.command_failed.connect ((name, parameters, error) => {
        assert_cmpstr (name, CompareOperator.EQ, "LogEvent");
        assert_error (error, Spark.ChannelError.quark (), Spark.ChannelError.NOT_SUPPORTED);
        failures++;
    });
    try {
        server.start_in_thread ();
        var dispatcher = server.create_dispatcher ();
        try {
            dispatcher.request_sync ("GetData", null, null);
            assert_not_reached ();
        } catch (Spark.ChannelError.NOT_SUPPORTED e) {
        }
        dispatcher.send_command ("LogEvent", null);
    } catch (Error e) {
        error ("%s", e.message);
    }
    var done = false;
    Timeout.add (1, () => {
        done = failures == 1;
        return done ? Source.REMOVE : Source.CONTINUE;
    });
    iterate_until (ref done);
    shutdown (server);
}

void test_invocation_later () {
    var handler = new LaterHandler ();
    var server = new Spark.ModuleServer (handler);
    try {
        server.start (null);
        var dispatcher = server.create_dispatcher ();

        Idle.add (() => {
            if (handler.held.length == 0)
                return Source.CONTINUE;
            var invocation = handler.held[0];
            handler.held.remove_index (0);
            assert_cmpstr (invocation.get_name (), CompareOperator.EQ, "Later");
            assert_nonnull (invocation.get_cancellable ());
            invocation.return_value (new Variant ("au", null));
            return Source.REMOVE;
        });
        var reply = request (dispatcher, "Later", new Variant.string ("p"), new VariantType ("au"));
        assert_cmpuint ((uint) reply.n_children (), CompareOperator.EQ, 0);

        Idle.add (() => {
            if (handler.held.length == 0)
                return Source.CONTINUE;
            handler.held[0].return_error_literal (IOError.quark (), IOError.PERMISSION_DENIED, "Not yours");
            handler.held.remove_index (0);
            return Source.REMOVE;
        });
        try {
            request (dispatcher, "Denied");
            assert_not_reached ();
        } catch (IOError.PERMISSION_DENIED e) {
            assert_cmpstr (e.message, CompareOperator.EQ, "Not yours");
        }

        /* Dropped without a reply. */
        Idle.add (() => {
            if (handler.held.length == 0)
                return Source.CONTINUE;
            handler.held.remove_index (0);
            return Source.REMOVE;
        });
        try {
            request (dispatcher, "Dropped");
            assert_not_reached ();
        } catch (Spark.ChannelError.NO_REPLY e) {
        }
    } catch (Error e) {
        error ("%s", e.message);
    }
    shutdown (server);
}

void test_request_full () {
    var server = new Spark.ModuleServer (new SyncHandler ());
    try {
        server.start_in_thread ();
    } catch (Error e) {
        error ("%s", e.message);
    }
    var dispatcher = server.create_dispatcher ();
    var done = 0;

    dispatcher.request_full ("Int", null, null, null, (reply, error) => {
        assert_true (error == null);
        assert_cmpint (reply.get_int32 (), CompareOperator.EQ, 42);
        done++;
    });
    dispatcher.request_full ("Int", null, VariantType.STRING, null, (reply, error) => {
        assert_true (reply == null);
        assert_error (error, Spark.ChannelError.quark (), Spark.ChannelError.TYPE_MISMATCH);
        assert_true ("has type “i”, expected “s”" in error.message);
        done++;
    });
    assert_cmpint (done, CompareOperator.EQ, 0);
    var all = false;
    Timeout.add (1, () => {
        all = done == 2;
        return all ? Source.REMOVE : Source.CONTINUE;
    });
    iterate_until (ref all);
    shutdown (server);
}

void test_errors () {
    /* CLOSED: never started. */
    var server = new Spark.ModuleServer (new SyncHandler ());
    var dispatcher = server.create_dispatcher ();
    try {
        dispatcher.request_sync ("Int", null, null);
        assert_not_reached ();
    } catch (Error e) {
        assert_error (e, Spark.ChannelError.quark (), Spark.ChannelError.CLOSED);
    }

    server = new Spark.ModuleServer (new SyncHandler ());
    server.capacity = 1;
    dispatcher = server.create_dispatcher ();
    try {
        server.start (null);
        try {
            server.start_in_thread ();
            assert_not_reached ();
        } catch (Spark.ChannelError.ALREADY_STARTED e) {
        }
        try {
            dispatcher.request_sync ("Int", null, null);
            assert_not_reached ();
        } catch (Spark.ChannelError.WOULD_DEADLOCK e) {
        }
        assert_true (dispatcher.try_send_command ("LogEvent", null));
        try {
            dispatcher.try_send_command ("LogEvent", null);
            assert_not_reached ();
        } catch (Spark.ChannelError.FULL e) {
        }
        try {
            request (dispatcher, "Int", null, VariantType.STRING);
            assert_not_reached ();
        } catch (Spark.ChannelError.TYPE_MISMATCH e) {
        }
        try {
            request (dispatcher, "Null");
            assert_not_reached ();
        } catch (Spark.ChannelError.NO_REPLY e) {
        }
        try {
            request (dispatcher, "Fail");
            assert_not_reached ();
        } catch (IOError.NOT_FOUND e) {
            assert_cmpstr (e.message, CompareOperator.EQ, "No data for “user123”");
        }
        var cancellable = new Cancellable ();
        cancellable.cancel ();
        try {
            request (dispatcher, "Int", null, null, cancellable);
            assert_not_reached ();
        } catch (IOError.CANCELLED e) {
        }
    } catch (Error e) {
        error ("%s", e.message);
    }
    shutdown (server);

    /* TIMED_OUT: the handler holds the invocation. */
    var later = new LaterHandler ();
    server = new Spark.ModuleServer (later);
    dispatcher = server.create_dispatcher ();
    dispatcher.timeout = 50;
    try {
        server.start (null);
        request (dispatcher, "Slow");
        assert_not_reached ();
    } catch (Spark.ChannelError.TIMED_OUT e) {
        assert_cmpuint (later.held.length, CompareOperator.EQ, 1);
        assert_true (later.held[0].get_cancellable ().is_cancelled ());
        later.held[0].return_value (new Variant.string ("too late"));
    } catch (Error e) {
        error ("%s", e.message);
    }
    shutdown (server);
}

void test_command_failed_and_shutdown_token () {
    var handler = new SyncHandler ();
    var server = new Spark.ModuleServer (handler);
    Error? failure = null;
    server.command_failed.connect ((name, parameters, error) => {
        assert_cmpstr (name, CompareOperator.EQ, "FailCommand");
        failure = error.copy ();
    });
    var token = new Cancellable ();
    var token_cancelled = false;
    token.cancelled.connect (() => {
        token_cancelled = true;
        MainContext.default ().wakeup ();
    });

    try {
        server.start_in_thread ();
        var dispatcher = server.create_dispatcher ();
        dispatcher.send_command ("FailCommand", new Variant.string ("p"));
        assert_true (dispatcher.send_shutdown (token));
        try {
            dispatcher.send_shutdown (null);
            assert_not_reached ();
        } catch (Spark.ChannelError.CLOSED e) {
        }
    } catch (Error e) {
        error ("%s", e.message);
    }
    iterate_until (ref token_cancelled);
    /* The emission was queued on the owner context before the server's
     * end, so it has run by the time shutdown() returns. */
    shutdown (server);
    assert_error (failure, IOError.quark (), IOError.NO_SPACE);
    assert_cmpint (handler.commands.length, CompareOperator.EQ, 1);
}

int main (string[] args) {
    Intl.setlocale ();
    Test.init (ref args);
    Test.add_func ("/bindings/vala/handler/sync-in-thread", test_sync_handler_in_thread);
    Test.add_func ("/bindings/vala/handler/defaults-not-supported", test_defaults_not_supported);
    Test.add_func ("/bindings/vala/invocation/reply-later", test_invocation_later);
    Test.add_func ("/bindings/vala/request-full", test_request_full);
    Test.add_func ("/bindings/vala/errors", test_errors);
    Test.add_func ("/bindings/vala/command-failed-and-shutdown-token", test_command_failed_and_shutdown_token);
    return Test.run ();
}
