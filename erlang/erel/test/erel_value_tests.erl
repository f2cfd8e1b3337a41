-module(erel_value_tests).
-include_lib("eunit/include/eunit.hrl").

term(JsonText) ->
    {ok, J} = erel_json:decode(JsonText),
    erel_value:to_term(J).

to_term_test_() ->
    [?_assertEqual("hi", term(<<"\"hi\"">>)),
     ?_assertEqual([104, 233], term(<<"\"h\\u00e9\"">>)),
     ?_assertEqual(42, term(<<"42">>)),
     ?_assertEqual(1.5, term(<<"1.5">>)),
     ?_assertEqual(true, term(<<"true">>)),
     ?_assertEqual(false, term(<<"false">>)),
     ?_assertEqual(undefined, term(<<"null">>)),
     ?_assertEqual([1, "a", [true]], term(<<"[1, \"a\", [true]]">>)),
     ?_assertEqual(info, term(<<"{\"$atom\": \"info\"}">>)),
     ?_assertEqual('Hello World', term(<<"{\"$atom\": \"Hello World\"}">>)),
     ?_assertEqual(<<"bin">>, term(<<"{\"$binary\": \"bin\"}">>)),
     ?_assertEqual(<<"é"/utf8>>, term(<<"{\"$binary\": \"\\u00e9\"}">>)),
     ?_assertEqual({127, 0, 0, 1}, term(<<"{\"$tuple\": [127, 0, 0, 1]}">>)),
     ?_assertEqual({}, term(<<"{\"$tuple\": []}">>)),
     ?_assertEqual({a, "b", {c}}, term(<<"{\"$tuple\": [{\"$atom\":\"a\"}, \"b\", {\"$tuple\":[{\"$atom\":\"c\"}]}]}">>)),
     ?_assertEqual([{port, 8080}, {host, "x"}], term(<<"{\"port\": 8080, \"host\": \"x\"}">>)),
     ?_assertEqual([], term(<<"{}">>)),
     %% a special key only counts when it is the only key
     ?_assertEqual([{'$atom', "x"}, {y, 1}], term(<<"{\"$atom\": \"x\", \"y\": 1}">>)),
     ?_assertEqual([{handlers, [{default, [{level, info}]}]}],
                   term(<<"{\"handlers\": {\"default\": {\"level\": {\"$atom\": \"info\"}}}}">>))].

to_term_errors_test_() ->
    [?_assertError({bad_value, _}, term(<<"{\"$atom\": 1}">>)),
     ?_assertError({bad_value, _}, term(<<"{\"$binary\": [1]}">>)),
     ?_assertError({bad_value, _}, term(<<"{\"$tuple\": \"x\"}">>)),
     ?_assertError({bad_value, _}, term(<<"{\"\": 1}">>))].

app_env_test_() ->
    B64 = fun(Text) -> base64:encode_to_string(Text) end,
    [?_assertEqual({ok, [{hello, [{greeting, "hi"}, {n, 3}]}, {kernel, []}]},
                   erel_value:decode_app_env(B64(<<"{\"hello\": {\"greeting\": \"hi\", \"n\": 3}, \"kernel\": {}}">>))),
     %% the key level stays a key map even when a key looks special
     ?_assertEqual({ok, [{app, [{'$atom', "x"}]}]},
                   erel_value:decode_app_env(B64(<<"{\"app\": {\"$atom\": \"x\"}}">>))),
     ?_assertEqual({ok, []}, erel_value:decode_app_env(B64(<<"{}">>))),
     ?_assertMatch({error, "bad config value: " ++ _},
                   erel_value:decode_app_env(B64(<<"{\"app\": 1}">>))),
     ?_assertMatch({error, "bad config value: " ++ _},
                   erel_value:decode_app_env(B64(<<"[1]">>))),
     ?_assertMatch({error, "invalid JSON" ++ _}, erel_value:decode_app_env(B64(<<"{">>))),
     ?_assertMatch({error, "the argument is not valid base64"}, erel_value:decode_app_env("!!!"))].
