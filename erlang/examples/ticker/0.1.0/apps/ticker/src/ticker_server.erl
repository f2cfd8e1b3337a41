%% Counts ticks every interval_ms (application env, live-changeable with erel:apply_config/1).
-module(ticker_server).
-behaviour(gen_server).
-vsn(1).

-export([start_link/0, get/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% erel1 envelope of {"release_vsn","ticks","interval_ms"}.
get() -> gen_server:call(?MODULE, get).

init([]) ->
    schedule(),
    {ok, #{ticks => 0}}.

handle_call(get, _From, #{ticks := T} = S) ->
    {ok, Vsn} = application:get_key(ticker, vsn),
    Json = {[{release_vsn, list_to_binary(Vsn)}, {ticks, T}, {interval_ms, interval()}]},
    {reply, erel_rpc:envelope({ok, Json}), S}.

handle_cast(_Msg, S) -> {noreply, S}.

handle_info(tick, #{ticks := T} = S) ->
    schedule(),
    {noreply, S#{ticks := T + 1}};
handle_info(_Msg, S) ->
    {noreply, S}.

schedule() -> erlang:send_after(interval(), self(), tick).

interval() ->
    case application:get_env(ticker, interval_ms) of
        {ok, Ms} when is_integer(Ms), Ms > 0 -> Ms;
        _ -> 1000
    end.
