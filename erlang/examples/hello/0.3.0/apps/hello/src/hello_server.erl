%% hello 0.3.0: same state shape as 0.2.0 (v2); new code (module vsn 3). Upgrading from and
%% downgrading to 0.2.0 keeps the state as it is.
-module(hello_server).
-behaviour(gen_server).
%% code_change/3 receives the *module's* vsn: keep it explicit (an integer: a one-character
%% string such as "1" would come back as the integer 49).
-vsn(3).

-export([start_link/0, get/0, bump/0, put/2, ping/0, state/0, config_changed/3]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% {"release_vsn","module_vsn":3,"shape":"v2","count","pairs","config_changes","greeting",
%%  "count_at_upgrade" (null unless upgraded),"upgraded_from_module_vsn" (null unless upgraded)}
get() -> gen_server:call(?MODULE, get).

bump() -> gen_server:call(?MODULE, bump).

put(Key, Value) -> gen_server:call(?MODULE, {put, Key, Value}).

ping() -> gen_server:call(?MODULE, ping, 1000).

state() -> sys:get_state(?MODULE).

config_changed(Changed, New, Removed) ->
    gen_server:cast(?MODULE, {config_changed, Changed, New, Removed}).

init([]) ->
    {ok, #{shape => v2, count => 0, pairs => #{}, config_changes => 0, upgrade => undefined}}.

handle_call(get, _From, #{count := C, pairs := P, config_changes := N, upgrade := U} = S) ->
    {AtUpgrade, FromVsn} = case U of
                               #{count := C0, from_module_vsn := V} -> {C0, V};
                               undefined -> {null, null}
                           end,
    Json = {[{release_vsn, app_vsn()}, {module_vsn, 3}, {shape, v2}, {count, C},
             {pairs, {[{text(K), text(V)} || {K, V} <- lists:sort(maps:to_list(P))]}},
             {config_changes, N}, {greeting, text(greeting())},
             {count_at_upgrade, AtUpgrade}, {upgraded_from_module_vsn, FromVsn}]},
    {reply, erel_rpc:envelope({ok, Json}), S};
handle_call(bump, _From, #{count := C} = S) ->
    {reply, C + 1, S#{count := C + 1}};
handle_call({put, K, V}, _From, #{pairs := P} = S) ->
    {reply, ok, S#{pairs := P#{K => V}}};
handle_call(ping, _From, S) ->
    {reply, ok, S}.

handle_cast({config_changed, _Changed, _New, _Removed}, #{config_changes := N} = S) ->
    {noreply, S#{config_changes := N + 1}}.

%% Up from 0.2.0 and down to 0.2.0: the v2 map stays as it is.
code_change(_OldVsn, #{shape := v2} = S, _Extra) ->
    {ok, S}.

app_vsn() ->
    {ok, V} = application:get_key(hello, vsn),
    list_to_binary(V).

greeting() -> application:get_env(hello, greeting, "").

text(T) ->
    case io_lib:printable_unicode_list(T) of
        true -> unicode:characters_to_binary(T);
        false -> unicode:characters_to_binary(io_lib:format("~tp", [T]))
    end.
