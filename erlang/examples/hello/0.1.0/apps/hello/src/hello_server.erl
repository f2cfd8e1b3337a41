%% hello 0.1.0: state shape v1, a record {state, Count, Pairs, ConfigChanges}.
-module(hello_server).
-behaviour(gen_server).
%% code_change/3 receives the *module's* vsn: keep it explicit (an integer: a one-character
%% string such as "1" would come back as the integer 49).
-vsn(1).

-export([start_link/0, get/0, bump/0, put/2, ping/0, state/0, config_changed/3]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

-record(state, {count = 0 :: non_neg_integer(),
                pairs = [] :: [{term(), term()}],
                config_changes = 0 :: non_neg_integer()}).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% The state as an erel1 envelope (same format as erel_rpc), so tests decode it like any RPC:
%% {"release_vsn","module_vsn","shape":"v1","count","pairs":{k:v},"config_changes","greeting"}
get() -> gen_server:call(?MODULE, get).

%% Increments the counter; returns the new value.
bump() -> gen_server:call(?MODULE, bump).

put(Key, Value) -> gen_server:call(?MODULE, {put, Key, Value}).

ping() -> gen_server:call(?MODULE, ping, 1000).

%% The raw state, for people in a shell.
state() -> sys:get_state(?MODULE).

config_changed(Changed, New, Removed) ->
    gen_server:cast(?MODULE, {config_changed, Changed, New, Removed}).

init([]) -> {ok, #state{}}.

handle_call(get, _From, #state{count = C, pairs = P, config_changes = N} = S) ->
    Json = {[{release_vsn, app_vsn()}, {module_vsn, 1}, {shape, v1}, {count, C},
             {pairs, {[{text(K), text(V)} || {K, V} <- P]}},
             {config_changes, N}, {greeting, text(greeting())}]},
    {reply, erel_rpc:envelope({ok, Json}), S};
handle_call(bump, _From, #state{count = C} = S) ->
    {reply, C + 1, S#state{count = C + 1}};
handle_call({put, K, V}, _From, #state{pairs = P} = S) ->
    {reply, ok, S#state{pairs = lists:keystore(K, 1, P, {K, V})}};
handle_call(ping, _From, S) ->
    {reply, ok, S}.

handle_cast({config_changed, _Changed, _New, _Removed}, #state{config_changes = N} = S) ->
    {noreply, S#state{config_changes = N + 1}}.

code_change(_OldVsn, S, _Extra) -> {ok, S}.

app_vsn() ->
    {ok, V} = application:get_key(hello, vsn),
    list_to_binary(V).

greeting() -> application:get_env(hello, greeting, "").

text(T) ->
    case io_lib:printable_unicode_list(T) of
        true -> unicode:characters_to_binary(T);
        false -> unicode:characters_to_binary(io_lib:format("~tp", [T]))
    end.
