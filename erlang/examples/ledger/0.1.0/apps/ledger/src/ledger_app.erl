-module(ledger_app).
-behaviour(application).
-vsn(1).

-export([start/2, stop/1, config_change/3]).

start(_Type, _Args) -> ledger_sup:start_link().

stop(_State) -> ok.

%% A changed interval_ms takes effect at the next tick.
config_change(_Changed, _New, _Removed) -> ok.
