%%% @doc The RPC contract between the erel-sync agent and a release (format `erel1').
%%%
%%% The agent calls these functions with `erl_call -R -sname NODE -c COOKIE -a
%%% 'erel_rpc Fun [Args]''. Every function returns a charlist
%%%
%%%     "erel1:" ++ Base64(JsonText)
%%%
%%% where JsonText (UTF-8) is `{"ok":true,"value":V}' or `{"ok":false,"error":"reason"}'
%%% (reason: human-readable text, at most ~2000 characters). Base64 keeps erl_call's output a
%%% plain quoted string with nothing to unescape. Anything else on erl_call's stdout
%%% (`{badrpc, ...}', a crash report) is an RPC failure. No function raises: everything is
%%% caught and reported as `ok:false'. See docs/erel.md for the values.
-module(erel_rpc).

-export([status/0, health/0, check/2, observe/0, observe/2, apply_config/1,
         unpack/1, install/1, make_permanent/1, rollback/0, relup_from/1,
         set_peers/1, peers/0]).
%% For release authors who want to expose their own calls in the same format, and for tests.
-export([envelope/1, decode_envelope/1]).

-define(PREFIX, "erel1:").
%% erl_call prints a charlist of 65,536 or more characters as a list of integers (the external
%% format's STRING_EXT holds at most 65,535): the envelope stays below that, so JSON text
%% may have at most (65535 - 6) div 4 * 3 = 49146 bytes.
-define(MAX_JSON, 49146).

-type envelope() :: string().
-export_type([envelope/0]).

%% @doc `{"release","current","permanent","versions":[{"version","status"}],
%% "applications":[{"name","version"}],"uptime_ms","memory_bytes","processes","otp_release",
%% "node"}'. Cheap: no disk access.
-spec status() -> envelope().
status() ->
    run(fun() ->
                case erel:status() of
                    {ok, S} -> {ok, status_json(S)};
                    Error -> Error
                end
        end).

status_json(#{release := Name, current := Cur, permanent := Perm, versions := Vs,
              applications := Apps, uptime_ms := Up, memory_bytes := Mem,
              processes := Procs, otp_release := Otp, node := Node}) ->
    {[{release, str(Name)},
      {current, str_or_null(Cur)},
      {permanent, str_or_null(Perm)},
      {versions, [{[{version, str(V)}, {status, S}]} || #{version := V, status := S} <- Vs]},
      {applications, [{[{name, N}, {version, str(V)}]} || #{name := N, version := V} <- Apps]},
      {uptime_ms, Up},
      {memory_bytes, Mem},
      {processes, Procs},
      {otp_release, str(Otp)},
      {node, Node}]}.

%% @doc `{"healthy":true}' or `{"healthy":false,"reason":"..."}' (see erel:health/0). An
%% unhealthy release is still `ok:true': the call itself worked.
-spec health() -> envelope().
health() ->
    run(fun() -> health_json(erel:health()) end).

%% @doc Runs one check `Mod:Fun()' (atoms; must return `ok'), bounded like health/0. Same value.
-spec check(module() | string(), atom() | string()) -> envelope().
check(Mod, Fun) ->
    run(fun() -> health_json(erel:run_check(to_atom(Mod), to_atom(Fun))) end).

health_json(ok) -> {ok, {[{healthy, true}]}};
health_json({error, Reason}) ->
    {ok, {[{healthy, false}, {reason, str(erel:format_reason(Reason))}]}}.

%% @doc Status and health in one call: `{"status": S, "health": H}', S as status/0's value and
%% H as health/0's. The agent's per-tick probe: one erl_call per release and tick instead of two.
%% When the status fails (e.g. the node is still booting), the answer is that `ok:false'.
-spec observe() -> envelope().
observe() ->
    observe_with(fun erel:health/0).

%% @doc As observe/0, with the single check `Mod:Fun()' (as check/2) as the health part.
-spec observe(module() | string(), atom() | string()) -> envelope().
observe(Mod, Fun) ->
    observe_with(fun() -> erel:run_check(to_atom(Mod), to_atom(Fun)) end).

observe_with(Check) ->
    run(fun() ->
                case erel:status() of
                    {ok, S} ->
                        {ok, Health} = health_json(Check()),
                        %% The peers too (a clustered release's cluster, for `status'): one
                        %% call per tick still. Empty lists before any set_peers.
                        {ok, Peers} = peers_json(erel:peers()),
                        {ok, {[{status, status_json(S)}, {health, Health}, {peers, Peers}]}};
                    Error -> Error
                end
        end).

%% @doc Base64 of a JSON list of node names (`["hello@web-2.example.com", ...]'): the peers to
%% connect to and keep connected (erel:set_peers/1). Value: the same as peers/0.
-spec set_peers(string() | binary()) -> envelope().
set_peers(B64) ->
    run(fun() ->
                case decode_nodes(B64) of
                    {ok, Nodes} ->
                        case erel:set_peers(Nodes) of
                            ok -> peers_json(erel:peers());
                            Error -> Error
                        end;
                    Error -> Error
                end
        end).

%% @doc `{"expected":[...],"connected":[...],"missing":[...]}' (node names).
-spec peers() -> envelope().
peers() ->
    run(fun() -> peers_json(erel:peers()) end).

peers_json({ok, #{expected := E, connected := C, missing := M}}) ->
    {ok, {[{expected, [str(N) || N <- E]}, {connected, [str(N) || N <- C]},
           {missing, [str(N) || N <- M]}]}};
peers_json(Error) ->
    Error.

decode_nodes(B64) ->
    try erel_json:decode(base64:decode(B64)) of
        {ok, Names} when is_list(Names) ->
            case lists:all(fun is_node_name/1, Names) of
                true -> {ok, [binary_to_atom(N, utf8) || N <- Names]};
                false -> {error, "peers: a list of node names (name@host)"}
            end;
        _ ->
            {error, "peers: not a JSON list"}
    catch
        _:_ -> {error, "peers: not base64 JSON"}
    end.

is_node_name(N) when is_binary(N), byte_size(N) =< 255 ->
    case binary:split(N, <<"@">>, [global]) of
        [Name, Host] -> Name =/= <<>> andalso Host =/= <<>>;
        _ -> false
    end;
is_node_name(_) ->
    false.

%% @doc Base64 of the JSON `{"app": {"key": value}}' (value encoding: see erel_value) ->
%% `{"changed": ["app", ...]}', the applications whose env actually changed.
-spec apply_config(string() | binary()) -> envelope().
apply_config(B64) ->
    run(fun() ->
                case erel_value:decode_app_env(B64) of
                    {ok, AppEnv} ->
                        case erel:apply_config(AppEnv) of
                            {ok, Changed} -> {ok, {[{changed, Changed}]}};
                            Error -> Error
                        end;
                    Error -> Error
                end
        end).

%% @doc Unpacks `<root>/releases/<Vsn>.tar.gz' -> the version string. Idempotent.
-spec unpack(string()) -> envelope().
unpack(Vsn) ->
    with_vsn(Vsn, fun(V) ->
                          case erel:unpack(V) of
                              {ok, V2} -> {ok, str(V2)};
                              Error -> Error
                          end
                  end).

%% @doc Hot-installs an unpacked version (not permanent) -> `{"from","to","restart"}'.
%% `restart' is true only for a relup that restarts the emulator (restart_new_emulator).
-spec install(string()) -> envelope().
install(Vsn) ->
    with_vsn(Vsn, fun(V) ->
                          case erel:install(V) of
                              {ok, #{from := F, to := T, restart := R}} ->
                                  {ok, {[{from, str_or_null(F)}, {to, str(T)}, {restart, R}]}};
                              Error -> Error
                          end
                  end).

%% @doc Makes an installed version permanent -> `{"permanent": Vsn}'. Idempotent.
-spec make_permanent(string()) -> envelope().
make_permanent(Vsn) ->
    with_vsn(Vsn, fun(V) ->
                          case erel:make_permanent(V) of
                              ok -> {ok, {[{permanent, str(V)}]}};
                              Error -> Error
                          end
                  end).

%% @doc Back to the permanent version after a non-permanent install -> `{"from","to"}'
%% (`from' =:= `to' when there was nothing to roll back).
-spec rollback() -> envelope().
rollback() ->
    run(fun() ->
                case erel:rollback() of
                    {ok, #{from := F, to := T}} -> {ok, {[{from, str_or_null(F)}, {to, str(T)}]}};
                    Error -> Error
                end
        end).

%% @doc The versions unpacked release `Vsn''s relup upgrades from -> `["0.1.0", ...]',
%% `[]' without a relup.
-spec relup_from(string()) -> envelope().
relup_from(Vsn) ->
    with_vsn(Vsn, fun(V) ->
                          case erel:relup_from(V) of
                              {ok, Froms} -> {ok, [str(F) || F <- Froms]};
                              Error -> Error
                          end
                  end).

%% ---------------------------------------------------------------------------------------------
%% Envelope

%% @doc `{ok, Json}' or `{error, Reason}' (any term; made human readable) -> `"erel1:..."'.
%% Never raises: a value that cannot be encoded becomes an error envelope.
-spec envelope({ok, erel_json:json()} | {error, term()}) -> envelope().
envelope({ok, Value}) ->
    try erel_json:encode({[{ok, true}, {value, Value}]}) of
        Json when byte_size(Json) =< ?MAX_JSON -> armour(Json);
        Json ->
            envelope({error, lists:flatten(
                               io_lib:format("erel: the result is too large for erl_call "
                                             "(~b bytes of JSON, at most ~b)",
                                             [byte_size(Json), ?MAX_JSON]))})
    catch
        _:_ -> envelope({error, "erel: the result has no JSON encoding"})
    end;
envelope({error, Reason}) ->
    Text = try erel:format_reason(Reason)
           catch _:_ -> "erel: unprintable error"
           end,
    Bin = case unicode:characters_to_binary(Text) of
              B when is_binary(B) -> B;
              _ -> <<"erel: unprintable error">>
          end,
    armour(erel_json:encode({[{ok, false}, {error, Bin}]})).

armour(Json) -> ?PREFIX ++ base64:encode_to_string(Json).

%% @doc The inverse, for tests and Erlang callers: `"erel1:..."' -> `{ok, Value}' or
%% `{error, Text}' (JSON as erel_json:decode/1 returns it), or `{invalid, Why}'.
-spec decode_envelope(string()) -> {ok, erel_json:json()} | {error, binary()} | {invalid, term()}.
decode_envelope(?PREFIX ++ B64) ->
    try erel_json:decode(base64:decode(B64)) of
        {ok, {[{<<"ok">>, true}, {<<"value">>, V}]}} -> {ok, V};
        {ok, {[{<<"ok">>, false}, {<<"error">>, E}]}} -> {error, E};
        Other -> {invalid, Other}
    catch
        C:R -> {invalid, {C, R}}
    end;
decode_envelope(Other) -> {invalid, {no_prefix, Other}}.

%% ---------------------------------------------------------------------------------------------
%% Helpers

%% The catch-all clause guards against a future bug, even where dialyzer proves it unreachable.
-dialyzer({no_match, run/1}).
run(Fun) ->
    Result = try Fun() of
                 {ok, _} = Ok -> Ok;
                 {error, _} = Error -> Error;
                 Other -> {error, {unexpected_result, Other}}
             catch
                 Class:Reason -> {error, {Class, Reason}}
             end,
    envelope(Result).

with_vsn(Vsn0, Fun) ->
    run(fun() ->
                case vsn(Vsn0) of
                    {ok, Vsn} -> Fun(Vsn);
                    error -> {error, lists:flatten(io_lib:format(
                                                     "not a release version: ~tP (expected a string "
                                                     "matching [0-9A-Za-z][0-9A-Za-z.+_-]{0,63})",
                                                     [Vsn0, 10]))}
                end
        end).

%% Versions become path components: keep them to a safe alphabet.
vsn(V) when is_binary(V) -> vsn(unicode:characters_to_list(V));
vsn(V) when is_atom(V) -> vsn(atom_to_list(V));
vsn(V) when is_list(V) ->
    case io_lib:printable_list(V) andalso
         re:run(V, "^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$", [{capture, none}]) =:= match of
        true -> {ok, V};
        false -> error
    end;
vsn(_) -> error.

to_atom(A) when is_atom(A) -> A;
to_atom(L) when is_list(L) -> list_to_atom(L);
to_atom(B) when is_binary(B) -> binary_to_atom(B, utf8);
to_atom(Other) -> error({not_an_atom, Other}).

str(S) when is_list(S) -> unicode:characters_to_binary(S);
str(B) when is_binary(B) -> B;
str(A) when is_atom(A) -> atom_to_binary(A, utf8).

str_or_null(undefined) -> null;
str_or_null(S) -> str(S).
