-module(erel_json_tests).
-include_lib("eunit/include/eunit.hrl").

enc(T) -> erel_json:encode(T).
dec(B) -> {ok, V} = erel_json:decode(B), V.

encode_scalars_test_() ->
    [?_assertEqual(<<"null">>, enc(null)),
     ?_assertEqual(<<"true">>, enc(true)),
     ?_assertEqual(<<"false">>, enc(false)),
     ?_assertEqual(<<"42">>, enc(42)),
     ?_assertEqual(<<"-7">>, enc(-7)),
     ?_assertEqual(<<"123456789012345678901234567890">>, enc(123456789012345678901234567890)),
     ?_assertEqual(<<"1.5">>, enc(1.5)),
     ?_assertEqual(<<"\"permanent\"">>, enc(permanent)),
     ?_assertEqual(<<"\"hi\"">>, enc(<<"hi">>))].

encode_containers_test_() ->
    [?_assertEqual(<<"[]">>, enc([])),
     ?_assertEqual(<<"[1,\"a\",[true]]">>, enc([1, <<"a">>, [true]])),
     ?_assertEqual(<<"{}">>, enc({[]})),
     ?_assertEqual(<<"{\"b\":1,\"a\":2}">>, enc({[{b, 1}, {<<"a">>, 2}]})),
     %% maps: keys sorted, deterministic
     ?_assertEqual(<<"{\"a\":2,\"b\":1}">>, enc(#{b => 1, <<"a">> => 2})),
     ?_assertEqual(<<"{\"k\":\"v\"}">>, enc({[{"k", <<"v">>}]}))].

encode_escapes_test_() ->
    [?_assertEqual(<<"\"a\\\"b\\\\c\"">>, enc(<<"a\"b\\c">>)),
     ?_assertEqual(<<"\"\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f\"">>,
                   enc(<<"\n\r\t\b\f", 1, 31, 127>>)),
     ?_assertEqual(<<"\"/\"">>, enc(<<"/">>)),
     %% valid UTF-8 passes through unchanged
     ?_assertEqual(<<"\"h", 16#C3, 16#A9, "\"">>, enc(<<"hé"/utf8>>)),
     ?_assertEqual(<<"\"", 16#F0, 16#9F, 16#98, 16#80, "\"">>, enc(<<16#1F600/utf8>>)),
     %% invalid UTF-8 is taken as Latin-1, so the output is always valid UTF-8
     ?_assertEqual(<<"\"h", 16#C3, 16#A9, "\"">>, enc(<<"h", 16#E9>>))].

encode_rejects_test_() ->
    [?_assertError({badjson, _}, enc({1, 2})),
     ?_assertError({badjson, _}, enc(self())),
     ?_assertError({badjson, _}, enc([1 | 2])),
     ?_assertError({badjson, _}, enc({[{1, 2}]}))].

decode_scalars_test_() ->
    [?_assertEqual(null, dec(<<"null">>)),
     ?_assertEqual(true, dec(<<" true ">>)),
     ?_assertEqual(false, dec(<<"\n\tfalse\r\n">>)),
     ?_assertEqual(0, dec(<<"0">>)),
     ?_assertEqual(0, dec(<<"-0">>)),
     ?_assertEqual(-12, dec(<<"-12">>)),
     ?_assertEqual(1.5, dec(<<"1.5">>)),
     ?_assertEqual(-0.25, dec(<<"-0.25">>)),
     ?_assertEqual(100.0, dec(<<"1e2">>)),
     ?_assertEqual(100.0, dec(<<"1E+2">>)),
     ?_assertEqual(0.015, dec(<<"1.5e-2">>)),
     ?_assertEqual(<<"x">>, dec(<<"\"x\"">>)),
     ?_assertEqual(<<>>, dec(<<"\"\"">>)),
     ?_assertEqual(1, dec("1"))].

decode_strings_test_() ->
    [?_assertEqual(<<"a\"b\\c/d\n\r\t\b\f">>, dec(<<"\"a\\\"b\\\\c\\/d\\n\\r\\t\\b\\f\"">>)),
     ?_assertEqual(<<"é"/utf8>>, dec(<<"\"\\u00e9\"">>)),
     ?_assertEqual(<<"é"/utf8>>, dec(<<"\"", 16#C3, 16#A9, "\"">>)),
     ?_assertEqual(<<16#1F600/utf8>>, dec(<<"\"\\ud83d\\ude00\"">>)),
     ?_assertEqual(<<"x", 16#1F600/utf8, "y">>, dec(<<"\"x\\uD83D\\uDE00y\"">>))].

decode_containers_test_() ->
    [?_assertEqual([], dec(<<"[]">>)),
     ?_assertEqual([1, [2, []], {[]}], dec(<<"[1, [2, []], {}]">>)),
     ?_assertEqual({[{<<"b">>, 1}, {<<"a">>, [true, null]}]},
                   dec(<<"{ \"b\" : 1 , \"a\" : [ true , null ] }">>)),
     ?_assertEqual({[{<<"k">>, 1}, {<<"k">>, 2}]}, dec(<<"{\"k\":1,\"k\":2}">>))].

decode_errors_test_() ->
    Bad = [<<>>, <<" ">>, <<"[">>, <<"[1,]">>, <<"{\"a\"}">>, <<"{\"a\":1,}">>, <<"{a:1}">>,
           <<"01">>, <<"1.">>, <<".5">>, <<"1e">>, <<"-">>, <<"+1">>, <<"tru">>, <<"nul">>,
           <<"\"abc">>, <<"\"\\x\"">>, <<"\"\\u12\"">>, <<"\"\\uZZZZ\"">>, <<"\"a\nb\"">>,
           <<"\"\\ud83d\"">>, <<"\"\\ude00\"">>, <<"\"", 16#FF, "\"">>, <<"1 2">>,
           <<"[1] x">>, <<"1e999">>, <<"NaN">>],
    [{binary_to_list(B), ?_assertMatch({error, {_, _}}, erel_json:decode(B))} || B <- Bad].

decode_error_position_test() ->
    ?assertEqual({error, {unexpected_character, 4}}, erel_json:decode(<<"[1, x]">>)).

roundtrip_test_() ->
    Docs = [{[{<<"release">>, <<"hello">>}, {<<"n">>, 3}, {<<"f">>, 2.5},
              {<<"l">>, [null, true, false, <<"ü \" \\ \n"/utf8>>]}, {<<"o">>, {[]}}]},
            [], <<"x">>, 1.0e300, -1.0e-300, 12345678901234567890],
    [?_assertEqual(D, dec(enc(D))) || D <- Docs].
