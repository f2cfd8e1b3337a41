-module(erel_peers_tests).
-include_lib("eunit/include/eunit.hrl").

-export([hook/2]).

missing_test() ->
    ?assertEqual([b@h], erel_peers:missing([a@h, b@h], [a@h, c@h])),
    ?assertEqual([], erel_peers:missing([], [a@h])).

peers_test_() ->
    {setup, fun() -> ok end, fun(_) -> stop() end,
     [fun before_any_set/0, fun set_and_get/0, fun hooks_for_expected_peers_only/0,
      fun rpc_round_trip/0, fun rpc_refuses_junk/0]}.

stop() ->
    case whereis(erel_peers) of
        undefined -> ok;
        Pid -> exit(Pid, kill)
    end.

before_any_set() ->
    stop(),
    ?assertEqual(#{expected => [], connected => [], missing => []}, erel_peers:get()).

set_and_get() ->
    %% Not distributed here: nobody can be reached, and the server still answers at once.
    ok = erel:set_peers([b@nowhere, a@nowhere, a@nowhere, node()]),
    ?assertEqual({ok, #{expected => [a@nowhere, b@nowhere], connected => [],
                        missing => [a@nowhere, b@nowhere]}}, erel:peers()),
    ok = erel:set_peers([]),
    ?assertEqual({ok, #{expected => [], connected => [], missing => []}}, erel:peers()).

hook(Event, Node) ->
    erel_peers_test_sink ! {hook, Event, Node},
    ok.

hooks_for_expected_peers_only() ->
    register(erel_peers_test_sink, self()),
    application:set_env(erel, peer_hooks, [{?MODULE, hook}, {no_such_module, f}]),
    try
        ok = erel:set_peers([a@nowhere]),
        erel_peers ! {nodeup, a@nowhere},
        erel_peers ! {nodeup, stranger@nowhere},
        erel_peers ! {nodedown, a@nowhere},
        ?assertEqual({hook, nodeup, a@nowhere}, next()),
        ?assertEqual({hook, nodedown, a@nowhere}, next()),
        ?assertEqual(none, next()),
        ?assertMatch({ok, #{expected := [a@nowhere]}}, erel:peers())  % a bad hook is survived
    after
        application:unset_env(erel, peer_hooks),
        unregister(erel_peers_test_sink)
    end.

next() ->
    receive {hook, _, _} = M -> M after 500 -> none end.

rpc_round_trip() ->
    Payload = base64:encode(<<"[\"x@nowhere\", \"y@nowhere\"]">>),
    ?assertMatch({ok, _}, erel_rpc:decode_envelope(erel_rpc:set_peers(binary_to_list(Payload)))),
    {ok, {Peers}} = erel_rpc:decode_envelope(erel_rpc:peers()),
    ?assertEqual([<<"x@nowhere">>, <<"y@nowhere">>], proplists:get_value(<<"expected">>, Peers)),
    ?assertEqual([], proplists:get_value(<<"connected">>, Peers)),
    ?assertEqual([<<"x@nowhere">>, <<"y@nowhere">>], proplists:get_value(<<"missing">>, Peers)).

rpc_refuses_junk() ->
    [?assertMatch({error, _}, erel_rpc:decode_envelope(erel_rpc:set_peers(Bad)))
     || Bad <- ["not base64!", binary_to_list(base64:encode(<<"{\"a\":1}">>)),
                binary_to_list(base64:encode(<<"[\"no-at-sign\"]">>)),
                binary_to_list(base64:encode(<<"[1]">>))]].
