%%% @doc Cluster formation for a clustered release: the peer nodes erel-sync expects, connected
%%% and kept connected.
%%%
%%% The agent knows which hosts of the group run the release (erel-sync's own membership) and
%%% gives the expected peer nodes to `erel:set_peers/1'. A process of this module, started by
%%% the first such call and linked to nothing (so it can never take the node down), connects to
%%% each expected peer that is not connected, at once, again every `peers_retry_ms' (erel's
%%% env, default 2000) while any is missing, and after every nodedown: libcluster's idea, fed
%%% by erel-sync instead of a discovery strategy. A peer that leaves the expected list is not
%%% disconnected (`global' and mnesia decide that for themselves).
%%%
%%% `erel:peers/0' answers `#{expected, connected, missing}'. Apps that want nodeup/nodedown
%%% for expected peers list `{peer_hooks, [{Mod, Fun}]}' in erel's env: `Mod:Fun(nodeup |
%%% nodedown, Node)' is called from this process; a hook that crashes is logged and ignored.
-module(erel_peers).
-behaviour(gen_server).

-export([set/1, get/0, missing/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SERVER, ?MODULE).
-define(CALL_TIMEOUT, 5000).

-type peers() :: #{expected := [node()], connected := [node()], missing := [node()]}.
-export_type([peers/0]).

%% @doc Sets the expected peers (this node itself is left out) and connects to the missing ones.
-spec set([node()]) -> ok.
set(Nodes) when is_list(Nodes) ->
    Expected = lists:usort([N || N <- Nodes, is_atom(N), N =/= node()]),
    ensure_started(),
    gen_server:call(?SERVER, {set, Expected}, ?CALL_TIMEOUT).

%% @doc Expected vs connected; all empty before the first `set/1'.
-spec get() -> peers().
get() ->
    case whereis(?SERVER) of
        undefined -> #{expected => [], connected => [], missing => []};
        _ -> gen_server:call(?SERVER, get, ?CALL_TIMEOUT)
    end.

%% @doc The expected peers not among `Connected'.
-spec missing([node()], [node()]) -> [node()].
missing(Expected, Connected) ->
    [N || N <- Expected, not lists:member(N, Connected)].

ensure_started() ->
    case whereis(?SERVER) of
        undefined ->
            case gen_server:start({local, ?SERVER}, ?MODULE, [], []) of
                {ok, _} -> ok;
                {error, {already_started, _}} -> ok
            end;
        _ ->
            ok
    end.

-spec init([]) -> {ok, map()}.
init([]) ->
    %% A node that is not distributed (a test) has no net_kernel to ask: nothing to monitor.
    _ = catch net_kernel:monitor_nodes(true),
    {ok, #{expected => [], timer => undefined}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({set, Expected}, _From, State) ->
    {reply, ok, connect(State#{expected := Expected})};
handle_call(get, _From, #{expected := Expected} = State) ->
    Connected = [N || N <- Expected, lists:member(N, nodes())],
    {reply, #{expected => Expected, connected => Connected,
              missing => missing(Expected, Connected)}, State};
handle_call(_Other, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(retry, State) ->
    {noreply, connect(State#{timer := undefined})};
handle_info({nodeup, Node}, State) ->
    hook(nodeup, Node, State),
    {noreply, State};
handle_info({nodedown, Node}, State) ->
    hook(nodedown, Node, State),
    {noreply, connect(State)};
handle_info(_Other, State) ->
    {noreply, State}.

%% A connect may wait for net_setuptime (7 s) on an unreachable host: each runs in a process
%% of its own, so this server always answers.
connect(#{expected := Expected} = State) ->
    case missing(Expected, nodes()) of
        [] ->
            State;
        Missing ->
            [spawn(fun() -> net_kernel:connect_node(N) end) || N <- Missing],
            schedule(State)
    end.

schedule(#{timer := undefined} = State) ->
    Ms = application:get_env(erel, peers_retry_ms, 2000),
    State#{timer := erlang:send_after(Ms, self(), retry)};
schedule(State) ->
    State.

hook(Event, Node, #{expected := Expected}) ->
    case lists:member(Node, Expected) of
        true ->
            [call_hook(M, F, Event, Node)
             || {M, F} <- application:get_env(erel, peer_hooks, [])],
            ok;
        false ->
            ok
    end.

call_hook(M, F, Event, Node) ->
    try
        M:F(Event, Node)
    catch
        Class:Reason ->
            logger:warning("erel peer hook ~p:~p(~p, ~p) failed: ~p:~p",
                           [M, F, Event, Node, Class, Reason])
    end.
