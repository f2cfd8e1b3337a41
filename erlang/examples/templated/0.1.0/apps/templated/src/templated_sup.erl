-module(templated_sup).
-behaviour(supervisor).
-vsn(1).

-export([start_link/0, init/1]).

start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) -> {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, []}}.
