%%% @doc erel: what lets erel-sync treat a release as more than a process.
%%%
%%% The native API, for people in a remote shell. Every call is bounded in time and none of
%%% them crashes the caller's node. The agent does not call this module directly: it calls
%%% `erel_rpc', which wraps these functions in a stable, base64-armoured JSON envelope.
%%%
%%% Release handling goes through `release_handler' (sasl), like `bin/<rel> upgrade' does.
-module(erel).

-export([status/0, health/0, apply_config/1,
         unpack/1, install/1, make_permanent/1, rollback/0, relup_from/1,
         set_peers/1, peers/0]).
%% Building blocks, also used by erel_rpc and usable in `health_checks'.
-export([apps_running/0, run_check/2, health_checks/0, releases_dir/0, with_timeout/2,
         format_reason/1]).

-define(DEFAULT_CHECKS, [{erel, apps_running}]).
-define(MAX_REASON, 2000).

-type vsn() :: string().
-type status() :: #{release := string(), current := vsn(), permanent := vsn() | undefined,
                    versions := [#{version := vsn(), status := atom()}],
                    applications := [#{name := atom(), version := string()}],
                    uptime_ms := non_neg_integer(), memory_bytes := non_neg_integer(),
                    processes := non_neg_integer(), otp_release := string(), node := node()}.
-export_type([status/0, vsn/0]).

%% ---------------------------------------------------------------------------------------------
%% Status and health

%% @doc Release name, versions (from release_handler's memory, no disk access), running
%% applications and a few VM figures. Cheap enough to be called every few seconds.
-spec status() -> {ok, status()} | {error, term()}.
status() ->
    case which_releases() of
        {ok, Rels} ->
            {Name, Current} = case current(Rels) of
                                  {N, C} -> {N, C};
                                  none -> {script_name(), undefined}
                              end,
            Permanent = case [V || {_, V, _, permanent} <- Rels] of
                            [P | _] -> P;
                            [] -> undefined
                        end,
            {UptimeMs, _} = erlang:statistics(wall_clock),
            {ok, #{release => Name,
                   current => Current,
                   permanent => Permanent,
                   versions => [#{version => V, status => S} || {_, V, _, S} <- Rels],
                   applications => lists:sort([#{name => A, version => Vsn}
                                               || {A, _, Vsn} <- which_applications()]),
                   uptime_ms => UptimeMs,
                   memory_bytes => erlang:memory(total),
                   processes => erlang:system_info(process_count),
                   otp_release => erlang:system_info(otp_release),
                   node => node()}};
        {error, _} = Error ->
            Error
    end.

%% @doc Runs the release's health checks, in order, within `health_timeout_ms' (default 10 s)
%% all together. The checks are the erel env `health_checks' (default
%% `[{erel, apps_running}]'), followed by the `erel_health_checks' env key of every running
%% application (an application declares its own checks in its .app file, so they change with
%% a hot upgrade). A check is `{Module, Function}', a zero-arity function returning `ok'.
-spec health() -> ok | {error, term()}.
health() ->
    Checks = health_checks(),
    with_timeout(fun() -> run_checks(Checks) end, env(health_timeout_ms, 10000)).

%% @doc The checks `health/0' runs, in order.
-spec health_checks() -> [{module(), atom()}].
health_checks() ->
    Base = case application:get_env(erel, health_checks) of
               {ok, L} when is_list(L) -> L;
               _ -> ?DEFAULT_CHECKS
           end,
    Declared = lists:append([L || {App, _, _} <- which_applications(),
                                  {ok, L} <- [application:get_env(App, erel_health_checks)],
                                  is_list(L)]),
    dedup(Base ++ Declared, []).

dedup([], Acc) -> lists:reverse(Acc);
dedup([C | T], Acc) ->
    case lists:member(C, Acc) of
        true -> dedup(T, Acc);
        false -> dedup(T, [C | Acc])
    end.

%% @doc Runs one check, `Module:Function()', which must return `ok', within
%% `health_timeout_ms'.
-spec run_check(module(), atom()) -> ok | {error, term()}.
run_check(Mod, Fun) when is_atom(Mod), is_atom(Fun) ->
    with_timeout(fun() -> run_checks([{Mod, Fun}]) end, env(health_timeout_ms, 10000));
run_check(Mod, Fun) ->
    {error, flat("a check is {Module, Function} with two atoms, got ~tp", [{Mod, Fun}])}.

run_checks([]) -> ok;
run_checks([{M, F} | T]) when is_atom(M), is_atom(F) ->
    try M:F() of
        ok -> run_checks(T);
        Other -> {error, flat("~s:~s() returned ~tP", [M, F, Other, 30])}
    catch
        error:undef:St ->
            case St of
                [{M, F, [], _} | _] -> {error, flat("health check ~s:~s/0 does not exist", [M, F])};
                _ -> {error, flat("~s:~s() crashed: error:undef ~tP", [M, F, St, 20])}
            end;
        Class:Reason ->
            {error, flat("~s:~s() crashed: ~s:~tP", [M, F, Class, Reason, 30])}
    end;
run_checks([Bad | _]) ->
    {error, flat("bad health check ~tP (expected {Module, Function})", [Bad, 20])}.

%% @doc The default check: every application the running release starts (start type other
%% than `load'/`none' in `releases/<vsn>/<rel>.rel', included applications excepted) runs.
-spec apps_running() -> ok | {error, string()}.
apps_running() ->
    case expected_apps() of
        {ok, Expected} ->
            Running = [A || {A, _, _} <- which_applications()],
            case Expected -- Running of
                [] -> ok;
                Missing -> {error, flat("applications not running: ~p", [Missing])}
            end;
        {error, Reason} ->
            {error, flat("cannot tell which applications should run: ~ts", [format_reason(Reason)])}
    end.

expected_apps() ->
    case which_releases() of
        {ok, Rels} ->
            case current_release(Rels) of
                none -> {error, "release_handler knows no current release"};
                {Name, Vsn, Libs, _} ->
                    RelFile = filename:join([releases_dir(), Vsn, Name ++ ".rel"]),
                    Apps = case file:consult(RelFile) of
                               {ok, [{release, _, _, RelApps}]} ->
                                   [element(1, A) || A <- RelApps, started(A)];
                               _ ->
                                   %% No .rel on disk: every library of the release.
                                   [list_to_atom(lib_name(L)) || L <- Libs]
                           end,
                    {ok, Apps -- included_apps()}
            end;
        Error ->
            Error
    end.

started({_, _, Type}) when Type =:= load; Type =:= none -> false;
started({_, _, Type, _}) when Type =:= load; Type =:= none -> false;
started(_) -> true.

included_apps() ->
    lists:append([Inc || {A, _, _} <- application:loaded_applications(),
                         {ok, Inc} <- [application:get_key(A, included_applications)]]).

%% "stdlib-4.2" -> "stdlib"
lib_name(Lib) ->
    case string:split(Lib, "-", trailing) of
        [N, _] -> N;
        _ -> Lib
    end.

%% ---------------------------------------------------------------------------------------------
%% Live configuration

%% @doc Sets application environment keys live, then calls the `Mod:config_change(Changed,
%% New, Removed)' callback of each running application whose env changed (as
%% `application_controller:config_change/1' does after a release upgrade). Keys not named
%% are left alone (Removed is always []). Returns the applications whose env changed. Bounded
%% by `config_timeout_ms' (default 30 s; on timeout the env may be partly applied).
-spec apply_config([{atom(), [{atom(), term()}]}]) -> {ok, [atom()]} | {error, term()}.
apply_config(AppEnv) ->
    with_timeout(fun() -> do_apply_config(AppEnv) end, env(config_timeout_ms, 30000)).

do_apply_config(AppEnv) ->
    case valid_app_env(AppEnv) of
        false ->
            {error, "expected [{App, [{Key, Value}]}] with atom apps and keys"};
        true ->
            Diffs = [{App, diff(App, KVs)} || {App, KVs} <- AppEnv],
            Touched = [{App, C, N} || {App, {C, N}} <- Diffs, C =/= [] orelse N =/= []],
            ok = application:set_env([{App, C ++ N} || {App, C, N} <- Touched]),
            Running = [A || {A, _, _} <- which_applications()],
            Results = [{App, callback(App, C, N)} || {App, C, N} <- Touched,
                                                     lists:member(App, Running)],
            case [{App, R} || {App, R} <- Results, R =/= ok] of
                [] -> {ok, [App || {App, _, _} <- Touched]};
                Failed ->
                    {error, flat("env applied, but config_change/3 failed: ~tP", [Failed, 30])}
            end
    end.

valid_app_env(L) when is_list(L) ->
    lists:all(fun({App, KVs}) when is_atom(App), is_list(KVs) ->
                      lists:all(fun({K, _}) -> is_atom(K); (_) -> false end, KVs);
                 (_) -> false
              end, L)
        andalso no_duplicates([App || {App, _} <- L])
        andalso lists:all(fun({_, KVs}) -> no_duplicates([K || {K, _} <- KVs]) end, L);
valid_app_env(_) -> false.

no_duplicates(L) -> length(L) =:= length(lists:usort(L)).

diff(App, KVs) ->
    Old = application:get_all_env(App),
    lists:foldr(fun({K, V}, {C, N}) ->
                        case lists:keyfind(K, 1, Old) of
                            {K, V} -> {C, N};
                            {K, _} -> {[{K, V} | C], N};
                            false -> {C, [{K, V} | N]}
                        end
                end, {[], []}, KVs).

callback(App, Changed, New) ->
    case application:get_key(App, mod) of
        {ok, {Mod, _}} ->
            _ = code:ensure_loaded(Mod),
            case erlang:function_exported(Mod, config_change, 3) of
                true ->
                    try Mod:config_change(Changed, New, []) of
                        ok -> ok;
                        Other -> Other
                    catch
                        Class:Reason -> {Class, Reason}
                    end;
                false -> ok
            end;
        _ -> ok
    end.

%% ---------------------------------------------------------------------------------------------
%% Releases

%% @doc Unpacks `<releases dir>/<Vsn>.tar.gz' (a tarball made by `rebar3 tar' or
%% `systools:make_tar') with release_handler. Unpacking a version release_handler already
%% knows is not an error. The tarball is moved to `releases/<Vsn>/<Rel>.tar.gz' first, the
%% place where `systools:make_tar' tarballs carry their .rel file (`releases/<Vsn>/<Rel>.rel');
%% release_handler deletes it after a successful unpack.
-spec unpack(vsn()) -> {ok, vsn()} | {error, term()}.
unpack(Vsn) ->
    with_releases(
      fun(Rels) ->
              case lists:keymember(Vsn, 2, Rels) of
                  true -> {ok, Vsn};
                  false -> do_unpack(Vsn, Rels)
              end
      end).

do_unpack(Vsn, Rels) ->
    Dir = releases_dir(),
    Tar = filename:join(Dir, Vsn ++ ".tar.gz"),
    Name = release_name(Rels),
    Target = filename:join([Dir, Vsn, Name ++ ".tar.gz"]),
    case {filelib:is_regular(Tar), filelib:is_regular(Target)} of
        {false, false} ->
            {error, flat("no release tarball at ~ts", [Tar])};
        {Fresh, _} ->
            MoveResult = case {filelib:ensure_dir(Target), Fresh} of
                             {ok, true} -> file:rename(Tar, Target);
                             {ok, false} -> ok; % a previous attempt already moved it
                             {Error, _} -> Error
                         end,
            case MoveResult of
                ok ->
                    RelFile = filename:join([Dir, Vsn, Name ++ ".rel"]),
                    RelText = read_from_tar(Target, filename:join(["releases", Vsn, Name ++ ".rel"])),
                    case release_call(fun() -> release_handler:unpack_release(Vsn ++ "/" ++ Name) end) of
                        {ok, Vsn} ->
                            %% release_handler deletes releases/<Vsn>/<Rel>.rel when the .rel
                            %% sits there; put it back, as relx lays out a release.
                            restore_file(RelFile, RelText),
                            {ok, Vsn};
                        {ok, Other} ->
                            {error, flat("the tarball for ~ts holds release version ~ts", [Vsn, Other])};
                        {error, {existing_release, Vsn}} -> {ok, Vsn};
                        {error, Reason} -> {error, {unpack_release, Reason}}
                    end;
                {error, Reason} ->
                    {error, flat("cannot move ~ts to ~ts: ~p", [Tar, Target, Reason])}
            end
    end.

read_from_tar(Tar, Name) ->
    case catch erl_tar:extract(Tar, [{files, [Name]}, memory, compressed]) of
        {ok, [{_, Bin}]} -> Bin;
        _ -> undefined
    end.

restore_file(_Path, undefined) -> ok;
restore_file(Path, Bin) ->
    case filelib:is_regular(Path) of
        true -> ok;
        false -> _ = file:write_file(Path, Bin), ok
    end.

%% @doc Installs an unpacked version with its relup (a hot upgrade or downgrade). Not yet
%% permanent: a VM restart boots the permanent version again. Installing the version that is
%% already current is a no-op (`from' =:= `to').
-spec install(vsn()) -> {ok, #{from := vsn(), to := vsn(), restart := boolean()}} | {error, term()}.
install(Vsn) ->
    with_releases(
      fun(Rels) ->
              case {current(Rels), lists:keyfind(Vsn, 2, Rels)} of
                  {_, false} -> {error, flat("release ~ts is not unpacked", [Vsn])};
                  {{_, Vsn}, _} -> {ok, #{from => Vsn, to => Vsn, restart => false}};
                  {Cur, _} ->
                      From = case Cur of {_, F} -> F; none -> undefined end,
                      case release_call(fun() -> release_handler:install_release(Vsn) end) of
                          {ok, _, _} -> {ok, #{from => From, to => Vsn, restart => false}};
                          {continue_after_restart, _, _} ->
                              {ok, #{from => From, to => Vsn, restart => true}};
                          {error, Reason} -> {error, {install_release, Reason}}
                      end
              end
      end).

%% @doc Makes an installed version permanent: the version a VM restart boots.
%% release_handler rewrites `releases/RELEASES' and `releases/start_erl.data'; like relx's
%% `bin/<rel> upgrade', erel then copies `bin/<rel>-<Vsn>' over `bin/<rel>' (relx start
%% scripts carry their version: `bin/<rel>' boots the version it was built for).
-spec make_permanent(vsn()) -> ok | {error, term()}.
make_permanent(Vsn) ->
    with_releases(
      fun(Rels) ->
              case lists:keyfind(Vsn, 2, Rels) of
                  false -> {error, flat("release ~ts is not unpacked", [Vsn])};
                  {Name, _, _, permanent} -> update_start_script(Name, Vsn);
                  {Name, _, _, _} ->
                      case release_call(fun() -> release_handler:make_permanent(Vsn) end) of
                          ok -> update_start_script(Name, Vsn);
                          {error, Reason} -> {error, {make_permanent, Reason}}
                      end
              end
      end).

update_start_script(Name, Vsn) ->
    Bin = filename:join(code:root_dir(), "bin"),
    Src = filename:join(Bin, Name ++ "-" ++ Vsn),
    Dst = filename:join(Bin, Name),
    Tmp = Dst ++ ".erel-tmp",
    case {file:read_file(Src), file:read_file(Dst)} of
        {{ok, Same}, {ok, Same}} -> ok;
        {{ok, Script}, _} ->
            Result = maybe_ok([fun() -> file:write_file(Tmp, Script) end,
                               fun() -> file:change_mode(Tmp, 8#755) end,
                               fun() -> file:rename(Tmp, Dst) end]),
            case Result of
                ok -> ok;
                {error, Reason} ->
                    _ = file:delete(Tmp),
                    {error, flat("~ts is permanent, but updating ~ts failed: ~ts",
                                 [Vsn, Dst, file:format_error(Reason)])}
            end;
        {{error, enoent}, _} -> ok; % not a relx layout: nothing to keep in step
        {{error, Reason}, _} ->
            {error, flat("~ts is permanent, but reading ~ts failed: ~ts",
                         [Vsn, Src, file:format_error(Reason)])}
    end.

maybe_ok([]) -> ok;
maybe_ok([F | T]) ->
    case F() of
        ok -> maybe_ok(T);
        Error -> Error
    end.

%% @doc After an install that was not made permanent, goes back to the permanent version (a
%% hot downgrade with the installed version's relup). When the current version is the
%% permanent one there is nothing to do and `from' =:= `to'.
-spec rollback() -> {ok, #{from := vsn(), to := vsn()}} | {error, term()}.
rollback() ->
    with_releases(
      fun(Rels) ->
              case {current(Rels), [V || {_, V, _, permanent} <- Rels]} of
                  {_, []} -> {error, "there is no permanent release to go back to"};
                  {{_, P}, [P | _]} -> {ok, #{from => P, to => P}};
                  {Cur, [P | _]} ->
                      From = case Cur of {_, F} -> F; none -> undefined end,
                      case release_call(fun() -> release_handler:install_release(P) end) of
                          {ok, _, _} -> {ok, #{from => From, to => P}};
                          {continue_after_restart, _, _} -> {ok, #{from => From, to => P}};
                          {error, Reason} -> {error, {install_release, Reason}}
                      end
              end
      end).

%% @doc The versions the relup of unpacked version `Vsn' upgrades from; `[]' when it has no
%% relup (then only a restart can switch to it).
-spec relup_from(vsn()) -> {ok, [vsn()]} | {error, term()}.
relup_from(Vsn) ->
    Dir = filename:join(releases_dir(), Vsn),
    case file:consult(filename:join(Dir, "relup")) of
        {ok, [{Vsn, UpFrom, _DownTo}]} -> {ok, [From || {From, _Descr, _Instrs} <- UpFrom]};
        {ok, _} -> {error, flat("~ts/relup is not a relup for ~ts", [Dir, Vsn])};
        {error, enoent} ->
            case filelib:is_dir(Dir) of
                true -> {ok, []};
                false -> {error, flat("release ~ts is not unpacked (no ~ts)", [Vsn, Dir])}
            end;
        {error, Reason} -> {error, flat("cannot read ~ts/relup: ~ts", [Dir, file:format_error(Reason)])}
    end.

%% ---------------------------------------------------------------------------------------------
%% Helpers

%% @doc The directory release_handler uses: sasl's `releases_dir', else $RELDIR, else
%% `<root>/releases'.
-spec releases_dir() -> file:filename().
releases_dir() ->
    case application:get_env(sasl, releases_dir) of
        {ok, Dir} -> Dir;
        undefined ->
            case os:getenv("RELDIR") of
                false -> filename:join(code:root_dir(), "releases");
                Dir -> Dir
            end
    end.

which_releases() ->
    case with_timeout(fun() -> {ok, release_handler:which_releases()} end,
                      env(probe_timeout_ms, 5000)) of
        {ok, Rels} -> {ok, Rels};
        {error, {exit, {noproc, _}}} ->
            case init:get_status() of
                {starting, _} -> {error, "the node is still booting (release_handler not started yet)"};
                {stopping, _} -> {error, "the node is stopping"};
                _ -> {error, "release_handler is not running (is sasl in the release?)"}
            end;
        {error, _} = Error -> Error
    end.

with_releases(Fun) ->
    case which_releases() of
        {ok, Rels} -> Fun(Rels);
        Error -> Error
    end.

release_call(Fun) ->
    with_timeout(Fun, env(release_timeout_ms, 300000)).

%% The running release: the one installed but not yet permanent, else the permanent one.
current_release(Rels) ->
    case [R || {_, _, _, current} = R <- Rels] of
        [R | _] -> R;
        [] ->
            case [R || {_, _, _, permanent} = R <- Rels] of
                [R | _] -> R;
                [] -> none
            end
    end.

current(Rels) ->
    case current_release(Rels) of
        {Name, Vsn, _, _} -> {Name, Vsn};
        none -> none
    end.

release_name(Rels) ->
    case Rels of
        [{Name, _, _, _} | _] -> Name;
        [] -> script_name()
    end.

script_name() ->
    {Name, _} = init:script_id(),
    Name.

%% @doc Runs `Fun' in a fresh process and waits at most `TimeoutMs'. The result is `Fun()'s,
%% or `{error, {timeout, Ms}}', or `{error, {Class, Reason}}' when it raised. On timeout the
%% process is killed; work it handed to another process (release_handler) may still complete.
-spec with_timeout(fun(() -> Result), timeout()) -> Result | {error, term()}.
with_timeout(Fun, TimeoutMs) ->
    {Pid, Ref} = spawn_monitor(fun() ->
                                       exit({erel_result, try {value, Fun()}
                                                          catch C:R -> {raised, C, R}
                                                          end})
                               end),
    receive
        {'DOWN', Ref, process, Pid, {erel_result, {value, Value}}} -> Value;
        {'DOWN', Ref, process, Pid, {erel_result, {raised, C, R}}} -> {error, {C, R}};
        {'DOWN', Ref, process, Pid, Other} -> {error, {exit, Other}}
    after TimeoutMs ->
            erlang:demonitor(Ref, [flush]),
            exit(Pid, kill),
            {error, {timeout, TimeoutMs}}
    end.

%% application:which_applications/0 waits 5 s when the application controller is busy (an
%% application starting or stopping); the probes wait less.
which_applications() ->
    application:which_applications(env(probe_timeout_ms, 5000)).

env(Key, Default) ->
    case application:get_env(erel, Key) of
        {ok, V} when is_integer(V), V > 0 -> V;
        _ -> Default
    end.

%% @doc A reason as human-readable text, at most ~2000 characters.
-spec format_reason(term()) -> string().
format_reason(Reason) ->
    Text = case io_lib:printable_unicode_list(Reason) of
               true when Reason =/= [] -> Reason;
               _ -> describe(Reason)
           end,
    truncate(lists:flatten(Text), ?MAX_REASON).

describe({timeout, Ms}) ->
    flat("timed out after ~p ms (the operation may still complete)", [Ms]);
describe({unpack_release, R}) -> "release_handler:unpack_release failed: " ++ format_reason(R);
describe({install_release, R}) -> "release_handler:install_release failed: " ++ format_reason(R);
describe({make_permanent, R}) -> "release_handler:make_permanent failed: " ++ format_reason(R);
describe({Class, R}) when Class =:= error; Class =:= exit; Class =:= throw ->
    flat("~s: ~tP", [Class, R, 40]);
describe(R) -> flat("~tP", [R, 40]).

truncate(Text, Max) ->
    case string:length(Text) > Max of
        true -> string:slice(Text, 0, Max - 3) ++ "...";
        false -> Text
    end.

flat(Fmt, Args) -> lists:flatten(io_lib:format(Fmt, Args)).

%% ---------------------------------------------------------------------------------------------
%% Cluster formation (a clustered release; see erel_peers)

%% @doc The peer nodes erel-sync expects this node to be connected to; connects and keeps
%% reconnecting to them (erel_peers).
-spec set_peers([node()]) -> ok | {error, term()}.
set_peers(Nodes) when is_list(Nodes) ->
    try erel_peers:set(Nodes)
    catch Class:Reason -> {error, {Class, Reason}}
    end.

%% @doc `#{expected, connected, missing}': the peers last set, and which of them are connected.
-spec peers() -> {ok, erel_peers:peers()} | {error, term()}.
peers() ->
    try {ok, erel_peers:get()}
    catch Class:Reason -> {error, {Class, Reason}}
    end.
