%%% @doc The JSON encoding of Erlang configuration values shared with the erel-sync agent
%%% (the agent renders sys.config from the same encoding):
%%%
%%%   JSON string                  -> charlist (Unicode code points)
%%%   JSON number                  -> integer or float
%%%   true / false                 -> the atoms true / false
%%%   null                         -> the atom undefined
%%%   array                        -> list
%%%   {"$atom": "x"}               -> atom x
%%%   {"$binary": "x"}             -> binary <<"x"/utf8>>
%%%   {"$tuple": [V1, V2, ...]}    -> tuple {V1, V2, ...}
%%%   any other object {"k": V}    -> proplist [{k, V}] with atom keys, document order kept
%%%
%%% `app_env/1' decodes the payload of apply_config: `{"app": {"key": value}}'.
-module(erel_value).

-export([to_term/1, app_env/1, decode_app_env/1]).

-type app_env() :: [{atom(), [{atom(), term()}]}].
-export_type([app_env/0]).

%% @doc JSON value (as returned by erel_json:decode/1) to Erlang term. Raises
%% `{bad_value, Why}' for malformed special objects.
-spec to_term(erel_json:json()) -> term().
to_term(null) -> undefined;
to_term(true) -> true;
to_term(false) -> false;
to_term(N) when is_number(N) -> N;
to_term(B) when is_binary(B) -> unicode:characters_to_list(B);
to_term(L) when is_list(L) -> [to_term(E) || E <- L];
to_term({[{<<"$atom">>, Name}]}) when is_binary(Name) -> binary_to_atom(Name, utf8);
to_term({[{<<"$atom">>, _}]}) -> error({bad_value, "\"$atom\" needs a string"});
to_term({[{<<"$binary">>, Str}]}) when is_binary(Str) -> Str;
to_term({[{<<"$binary">>, _}]}) -> error({bad_value, "\"$binary\" needs a string"});
to_term({[{<<"$tuple">>, Elems}]}) when is_list(Elems) -> list_to_tuple([to_term(E) || E <- Elems]);
to_term({[{<<"$tuple">>, _}]}) -> error({bad_value, "\"$tuple\" needs an array"});
to_term({Pairs}) when is_list(Pairs) -> [{key(K), to_term(V)} || {K, V} <- Pairs].

key(K) when is_binary(K), byte_size(K) > 0 -> binary_to_atom(K, utf8);
key(_) -> error({bad_value, "object keys must be non-empty strings"}).

%% @doc `{"app": {"key": value}}' (decoded) to `[{app, [{key, Term}]}]'. The second level is
%% always a key map, even if a key happens to be "$atom".
-spec app_env(erel_json:json()) -> app_env().
app_env({Apps}) when is_list(Apps) ->
    [{key(App), app_keys(App, Keys)} || {App, Keys} <- Apps];
app_env(_) -> error({bad_value, "expected an object {\"app\": {\"key\": value}}"}).

app_keys(_App, {Pairs}) when is_list(Pairs) -> [{key(K), to_term(V)} || {K, V} <- Pairs];
app_keys(App, _) ->
    error({bad_value, "the value of \"" ++ unicode:characters_to_list(App) ++ "\" must be an object"}).

%% @doc Base64 text of the JSON payload to an app env list.
-spec decode_app_env(binary() | string()) -> {ok, app_env()} | {error, string()}.
decode_app_env(B64) ->
    try base64:decode(B64) of
        Json ->
            case erel_json:decode(Json) of
                {ok, Value} ->
                    try {ok, app_env(Value)}
                    catch error:{bad_value, Why} -> {error, "bad config value: " ++ Why}
                    end;
                {error, {Reason, Pos}} ->
                    {error, lists:flatten(io_lib:format("invalid JSON: ~p at byte ~p", [Reason, Pos]))}
            end
    catch
        _:_ -> {error, "the argument is not valid base64"}
    end.
