-module(hello_app).
-behaviour(application).
-vsn(1).

-export([start/2, stop/1, config_change/3]).

start(_Type, _Args) -> hello_sup:start_link().

stop(_State) -> ok.

%% Called by release_handler after an upgrade and by erel:apply_config/1.
config_change(Changed, New, Removed) ->
    hello_server:config_changed(Changed, New, Removed).
