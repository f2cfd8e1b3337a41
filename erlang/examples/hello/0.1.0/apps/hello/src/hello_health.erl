%% The health check hello declares in its .app env (erel_health_checks).
-module(hello_health).
-vsn(1).

-export([check/0]).

check() ->
    case whereis(hello_server) of
        undefined -> {error, "hello_server is not running"};
        _ -> hello_server:ping()
    end.
