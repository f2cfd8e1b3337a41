%% hello 0.3.0: deliberately unhealthy, to exercise erel-sync's rollback.
-module(hello_health).
-vsn(2).

-export([check/0]).

check() ->
    {error, "hello 0.3.0 is deliberately unhealthy (erel-sync rollback demo)"}.
