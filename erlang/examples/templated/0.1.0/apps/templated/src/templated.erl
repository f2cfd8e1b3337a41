%% What the node really runs with, for tests: its name, the config files it booted with and
%% the application env that came from them.
-module(templated).
-vsn(1).

-export([get/0]).

%% erel1 envelope of {"release_vsn","node","config_files","greeting","source"}.
get() ->
    {ok, Vsn} = application:get_key(templated, vsn),
    Json = {[{release_vsn, list_to_binary(Vsn)},
             {node, atom_to_binary(node(), utf8)},
             {config_files, [text(F) || F <- init_args(config)]},
             {greeting, text(env(greeting))},
             {source, text(env(source))}]},
    erel_rpc:envelope({ok, Json}).

init_args(Flag) ->
    case init:get_argument(Flag) of
        {ok, Values} -> lists:append(Values);
        error -> []
    end.

env(Key) ->
    case application:get_env(templated, Key) of
        {ok, Value} -> Value;
        undefined -> undefined
    end.

text(Value) when is_list(Value) ->
    case unicode:characters_to_binary(Value) of
        Bin when is_binary(Bin) -> Bin;
        _ -> iolist_to_binary(io_lib:format("~p", [Value]))
    end;
text(Value) when is_binary(Value) -> Value;
text(Value) -> iolist_to_binary(io_lib:format("~p", [Value])).
