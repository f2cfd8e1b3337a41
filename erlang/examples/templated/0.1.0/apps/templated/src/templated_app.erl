-module(templated_app).
-behaviour(application).
-vsn(1).

-export([start/2, stop/1, config_change/3]).

start(_Type, _Args) -> templated_sup:start_link().

stop(_State) -> ok.

%% The env is read on every get/0: nothing to do on a live change.
config_change(_Changed, _New, _Removed) -> ok.
