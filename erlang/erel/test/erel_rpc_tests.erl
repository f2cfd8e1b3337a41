-module(erel_rpc_tests).
-include_lib("eunit/include/eunit.hrl").

-export([check_ok/0, check_fail/0, check_crash/0, check_slow/0, config_change/3, start/2, stop/1]).

check_ok() -> ok.
check_fail() -> {error, "disk full"}.
check_crash() -> error(boom).
check_slow() -> timer:sleep(5000), ok.

%% Used as an application callback module in apply_config_test_.
config_change(Changed, New, Removed) ->
    erel_rpc_tests_calls ! {config_change, Changed, New, Removed},
    ok.

unwrap(Envelope) ->
    ?assertMatch("erel1:" ++ _, Envelope),
    "erel1:" ++ B64 = Envelope,
    %% plain base64: nothing erl_call would escape
    ?assertEqual(nomatch, re:run(B64, "[^A-Za-z0-9+/=]")),
    erel_rpc:decode_envelope(Envelope).

get(Key, {Pairs}) ->
    {_, V} = lists:keyfind(atom_to_binary(Key, utf8), 1, Pairs),
    V.

envelope_test_() ->
    [?_assertEqual({ok, {[{<<"a">>, 1}]}}, unwrap(erel_rpc:envelope({ok, {[{a, 1}]}}))),
     ?_assertEqual({error, <<"plain text">>}, unwrap(erel_rpc:envelope({error, "plain text"}))),
     ?_assertEqual({error, <<"{some,term}">>}, unwrap(erel_rpc:envelope({error, {some, term}}))),
     ?_assertEqual({error, <<"ünïcödé"/utf8>>}, unwrap(erel_rpc:envelope({error, "ünïcödé"}))),
     ?_assertMatch({error, <<"erel: the result has no JSON encoding">>},
                   unwrap(erel_rpc:envelope({ok, self()}))),
     ?_assertEqual("erel1:" ++ base64:encode_to_string(<<"{\"ok\":true,\"value\":[1,\"x\"]}">>),
                   erel_rpc:envelope({ok, [1, <<"x">>]})),
     ?_assertEqual("erel1:" ++ base64:encode_to_string(<<"{\"ok\":false,\"error\":\"no\"}">>),
                   erel_rpc:envelope({error, "no"})),
     ?_assertMatch({invalid, _}, erel_rpc:decode_envelope("{badrpc,nodedown}"))].

%% erl_call prints a charlist of 65,536+ characters as integers: the envelope never gets there.
envelope_size_limit_test() ->
    Fits = erel_rpc:envelope({ok, binary:copy(<<"a">>, 49146 - 22)}),
    ?assertEqual(65534, length(Fits)),
    ?assertMatch({ok, _}, unwrap(Fits)),
    TooBig = erel_rpc:envelope({ok, binary:copy(<<"a">>, 49146 - 21)}),
    ?assertMatch({error, <<"erel: the result is too large for erl_call", _/binary>>}, unwrap(TooBig)).

error_is_bounded_test() ->
    {error, Text} = unwrap(erel_rpc:envelope({error, lists:duplicate(10000, $x)})),
    ?assert(byte_size(Text) =< 2000),
    {error, Text2} = unwrap(erel_rpc:envelope({error, {lists:seq(1, 100000)}})),
    ?assert(byte_size(Text2) =< 2000).

bad_vsn_test_() ->
    [?_assertMatch({error, <<"not a release version", _/binary>>}, unwrap(erel_rpc:unpack("../etc"))),
     ?_assertMatch({error, <<"not a release version", _/binary>>}, unwrap(erel_rpc:install("a/b"))),
     ?_assertMatch({error, <<"not a release version", _/binary>>}, unwrap(erel_rpc:relup_from(""))),
     ?_assertMatch({error, <<"not a release version", _/binary>>}, unwrap(erel_rpc:make_permanent(42)))].

bad_apply_config_test_() ->
    [?_assertMatch({error, <<"the argument is not valid base64">>}, unwrap(erel_rpc:apply_config("%%%"))),
     ?_assertMatch({error, <<"invalid JSON", _/binary>>},
                   unwrap(erel_rpc:apply_config(base64:encode_to_string("{\"a\":")))),
     ?_assertMatch({error, _}, unwrap(erel_rpc:apply_config(42)))].

%% Tests that need sasl's release_handler running on this (eunit) node.
local_node_test_() ->
    {setup,
     fun() ->
             {ok, Started} = application:ensure_all_started(sasl),
             ok = application:load(erel),
             Started
     end,
     fun(Started) ->
             application:unset_env(erel, health_checks),
             [application:stop(A) || A <- lists:reverse(Started)],
             application:unload(erel)
     end,
     [fun status/0, fun health_default/0, fun health_checks/0, fun health_timeout/0,
      fun check_one/0, fun observe/0, fun observe_one_check/0, fun relup_from_missing/0, fun unpack_missing/0, fun install_missing/0,
      fun apply_config/0]}.

status() ->
    {ok, S} = unwrap(erel_rpc:status()),
    ?assert(is_binary(get(release, S))),
    ?assert(is_binary(get(current, S))),
    ?assertEqual(atom_to_binary(node(), utf8), get(node, S)),
    ?assertEqual(list_to_binary(erlang:system_info(otp_release)), get(otp_release, S)),
    [?assert(is_integer(get(K, S)) andalso get(K, S) > 0) || K <- [uptime_ms, memory_bytes, processes]],
    [V | _] = get(versions, S),
    ?assert(lists:member(get(status, V), [<<"permanent">>, <<"current">>, <<"old">>, <<"unpacked">>])),
    Apps = [{get(name, A), get(version, A)} || A <- get(applications, S)],
    ?assertMatch({<<"kernel">>, _}, lists:keyfind(<<"kernel">>, 1, Apps)),
    ?assertMatch({<<"sasl">>, _}, lists:keyfind(<<"sasl">>, 1, Apps)).

health_default() ->
    %% the default check compares with the running release's .rel file: on a plain eunit
    %% node either verdict is fine, but the shape is fixed
    {ok, H} = unwrap(erel_rpc:health()),
    case get(healthy, H) of
        true -> ok;
        false -> ?assert(is_binary(get(reason, H)))
    end.

health_checks() ->
    application:set_env(erel, health_checks, [{?MODULE, check_ok}]),
    ?assertEqual({ok, {[{<<"healthy">>, true}]}}, unwrap(erel_rpc:health())),
    ?assertEqual(ok, erel:health()),
    application:set_env(erel, health_checks, [{?MODULE, check_ok}, {?MODULE, check_fail}]),
    {ok, H} = unwrap(erel_rpc:health()),
    ?assertEqual(false, get(healthy, H)),
    ?assertEqual(<<"erel_rpc_tests:check_fail() returned {error,\"disk full\"}">>, get(reason, H)),
    application:set_env(erel, health_checks, [{?MODULE, check_crash}]),
    {ok, H2} = unwrap(erel_rpc:health()),
    ?assertMatch(<<"erel_rpc_tests:check_crash() crashed: error:boom">>, get(reason, H2)),
    application:set_env(erel, health_checks, [{no_such_module_xyz, check}]),
    {ok, H3} = unwrap(erel_rpc:health()),
    ?assertEqual(<<"health check no_such_module_xyz:check/0 does not exist">>, get(reason, H3)),
    application:set_env(erel, health_checks, [bad]),
    ?assertMatch({error, "bad health check" ++ _}, erel:health()),
    application:unset_env(erel, health_checks).

health_timeout() ->
    application:set_env(erel, health_checks, [{?MODULE, check_slow}]),
    application:set_env(erel, health_timeout_ms, 100),
    T0 = erlang:monotonic_time(millisecond),
    {ok, H} = unwrap(erel_rpc:health()),
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000),
    ?assertEqual(false, get(healthy, H)),
    ?assertMatch(<<"timed out after 100 ms", _/binary>>, get(reason, H)),
    application:unset_env(erel, health_timeout_ms),
    application:unset_env(erel, health_checks).

check_one() ->
    ?assertEqual({ok, {[{<<"healthy">>, true}]}}, unwrap(erel_rpc:check(?MODULE, check_ok))),
    {ok, H} = unwrap(erel_rpc:check(?MODULE, check_fail)),
    ?assertEqual(false, get(healthy, H)),
    ?assertEqual({ok, {[{<<"healthy">>, true}]}}, unwrap(erel_rpc:check("erel_rpc_tests", "check_ok"))).

%% observe/0: status/0's value and health/0's value in one envelope.
observe() ->
    application:set_env(erel, health_checks, [{?MODULE, check_ok}]),
    {ok, O} = unwrap(erel_rpc:observe()),
    S = get(status, O),
    ?assertEqual(atom_to_binary(node(), utf8), get(node, S)),
    ?assert(is_binary(get(current, S))),
    {ok, Alone} = unwrap(erel_rpc:status()),
    ?assertEqual([K || {K, _} <- element(1, Alone)], [K || {K, _} <- element(1, S)]),
    ?assertEqual({[{<<"healthy">>, true}]}, get(health, O)),
    P = get(peers, O),  % the peers erel_peers keeps (a clustered release): lists of names
    ?assert(is_list(get(expected, P)) andalso is_list(get(missing, P))),
    application:set_env(erel, health_checks, [{?MODULE, check_ok}, {?MODULE, check_fail}]),
    {ok, Bad} = unwrap(erel_rpc:observe()),
    H = get(health, Bad),
    ?assertEqual(false, get(healthy, H)),
    ?assertEqual(<<"erel_rpc_tests:check_fail() returned {error,\"disk full\"}">>, get(reason, H)),
    application:unset_env(erel, health_checks).

%% observe/2: the health part is the one check Mod:Fun(), atoms or strings.
observe_one_check() ->
    {ok, O} = unwrap(erel_rpc:observe(?MODULE, check_ok)),
    ?assertEqual({[{<<"healthy">>, true}]}, get(health, O)),
    ?assert(is_binary(get(release, get(status, O)))),
    {ok, O2} = unwrap(erel_rpc:observe("erel_rpc_tests", "check_crash")),
    ?assertEqual(<<"erel_rpc_tests:check_crash() crashed: error:boom">>, get(reason, get(health, O2))),
    ?assertMatch({error, _}, unwrap(erel_rpc:observe(42, check_ok))).

relup_from_missing() ->
    ?assertMatch({error, <<"release 99.9.9 is not unpacked", _/binary>>},
                 unwrap(erel_rpc:relup_from("99.9.9"))).

unpack_missing() ->
    ?assertMatch({error, <<"no release tarball at ", _/binary>>}, unwrap(erel_rpc:unpack("99.9.9"))).

install_missing() ->
    ?assertEqual({error, <<"release 99.9.9 is not unpacked">>}, unwrap(erel_rpc:install("99.9.9"))),
    ?assertEqual({error, <<"release 99.9.9 is not unpacked">>}, unwrap(erel_rpc:make_permanent("99.9.9"))).

apply_config() ->
    %% a fake running application whose callback module is this test module
    App = erel_test_app,
    ok = application:load({application, App, [{vsn, "1"}, {modules, []}, {registered, []},
                                               {applications, [kernel, stdlib]},
                                               {mod, {?MODULE, []}}, {env, [{a, 1}, {b, "x"}]}]}),
    true = register(erel_rpc_tests_calls, self()),
    try
        Payload = base64:encode_to_string(
                    <<"{\"erel_test_app\": {\"a\": 2, \"b\": \"x\", \"c\": {\"$tuple\": [{\"$atom\": \"ok\"}, 1]}},"
                      " \"erel_test_other\": {\"k\": null}}">>),
        ?assertEqual({ok, {[{<<"changed">>, [<<"erel_test_app">>, <<"erel_test_other">>]}]}},
                     unwrap(erel_rpc:apply_config(Payload))),
        ?assertEqual({ok, 2}, application:get_env(App, a)),
        ?assertEqual({ok, {ok, 1}}, application:get_env(App, c)),
        ?assertEqual({ok, undefined}, application:get_env(erel_test_other, k)),
        %% not running: no callback
        receive {config_change, _, _, _} -> ?assert(false) after 0 -> ok end,
        %% same values again: nothing changed
        ?assertEqual({ok, {[{<<"changed">>, []}]}}, unwrap(erel_rpc:apply_config(Payload))),
        %% running: callback with Changed, New, Removed
        application:set_env(App, a, 0),
        ok = application:unset_env(App, c),
        meck_free_start(App),
        ?assertEqual({ok, [App]}, erel:apply_config([{App, [{a, 5}, {c, 1}, {b, "x"}]}])),
        receive
            {config_change, Changed, New, Removed} ->
                ?assertEqual({[{a, 5}], [{c, 1}], []}, {Changed, New, Removed})
        after 1000 -> ?assert(false)
        end,
        ?assertMatch({error, _}, erel:apply_config([{App, [{a, 1}, {a, 2}]}])),
        ?assertMatch({error, _}, erel:apply_config(not_a_list))
    after
        unregister(erel_rpc_tests_calls),
        application:stop(App),
        application:unload(App),
        application:unload(erel_test_other)
    end.

%% Starts App with this module as its callback module (start/2 below).
meck_free_start(App) ->
    ok = application:start(App).

start(_Type, _Args) -> {ok, spawn(fun() -> receive stop -> ok end end)}.
stop(_State) -> ok.
