%%% @doc A small, strict JSON codec (RFC 8259) for erel: OTP 25 ships no `json' module and
%%% erel must not depend on anything but kernel, stdlib and sasl.
%%%
%%% Erlang representation, both directions:
%%%   JSON object  - `{[{Key, Value}]}' (order kept; keys are binaries when decoded) or a map
%%%                  (encode only; keys sorted so the output is deterministic)
%%%   JSON array   - list
%%%   JSON string  - UTF-8 binary (encode also accepts atoms other than true/false/null)
%%%   JSON number  - integer or float
%%%   true, false, null - the atoms
%%% The encoder always produces valid UTF-8: a binary that is not valid UTF-8 is taken as Latin-1.
-module(erel_json).

-export([encode/1, decode/1]).
-export_type([json/0]).

-type json() :: null | boolean() | number() | binary() | atom()
              | [json()] | {[{binary() | atom(), json()}]} | #{binary() | atom() => json()}.

%% ---------------------------------------------------------------------------------------------
%% Encoding

%% @doc Encodes a term to a JSON text (a UTF-8 binary). Raises `{badjson, Term}' for a term
%% that has no JSON form (pid, tuple other than `{Proplist}', improper list, ...).
-spec encode(json()) -> binary().
encode(Term) ->
    iolist_to_binary(enc(Term)).

enc(null) -> <<"null">>;
enc(true) -> <<"true">>;
enc(false) -> <<"false">>;
enc(A) when is_atom(A) -> enc_string(atom_to_binary(A, utf8));
enc(I) when is_integer(I) -> integer_to_binary(I);
enc(F) when is_float(F) -> float_to_binary(F, [short]);
enc(B) when is_binary(B) -> enc_string(B);
enc(L) when is_list(L) -> [$[, join([enc(E) || E <- proper(L)]), $]];
enc(M) when is_map(M) -> enc_object(lists:sort([{key(K), V} || {K, V} <- maps:to_list(M)]));
enc({PL}) when is_list(PL) -> enc_object([{key(K), V} || {K, V} <- proper(PL)]);
enc(Other) -> error({badjson, Other}).

proper(L) ->
    case is_proper(L) of
        true -> L;
        false -> error({badjson, L})
    end.

is_proper([]) -> true;
is_proper([_ | T]) -> is_proper(T);
is_proper(_) -> false.

enc_object(Pairs) ->
    [${, join([[enc_string(K), $:, enc(V)] || {K, V} <- Pairs]), $}].

key(K) when is_binary(K) -> K;
key(K) when is_atom(K) -> atom_to_binary(K, utf8);
key(K) when is_list(K) ->
    case unicode:characters_to_binary(K) of
        B when is_binary(B) -> B;
        _ -> error({badjson, K})
    end;
key(K) -> error({badjson, K}).

join([]) -> [];
join([H | T]) -> [H | [[$,, E] || E <- T]].

enc_string(B0) ->
    B = case unicode:characters_to_binary(B0) of
            Valid when is_binary(Valid) -> Valid;
            _ -> unicode:characters_to_binary(B0, latin1)
        end,
    [$", escape(B, 0, B, []), $"].

%% Walks the bytes; copies unescaped runs as sub-binaries. Bytes >= 16#80 belong to UTF-8
%% sequences and never need escaping.
escape(<<>>, Len, Orig, Acc) ->
    lists:reverse([chunk(Orig, Len) | Acc]);
escape(<<C, Rest/binary>>, Len, Orig, Acc) when C < 16#20; C =:= $"; C =:= $\\; C =:= 16#7F ->
    Skip = Len + 1,
    <<_:Skip/binary, Tail/binary>> = Orig,
    escape(Rest, 0, Tail, [esc(C), chunk(Orig, Len) | Acc]);
escape(<<_, Rest/binary>>, Len, Orig, Acc) ->
    escape(Rest, Len + 1, Orig, Acc).

chunk(Orig, Len) -> binary:part(Orig, 0, Len).

esc($") -> <<"\\\"">>;
esc($\\) -> <<"\\\\">>;
esc($\n) -> <<"\\n">>;
esc($\r) -> <<"\\r">>;
esc($\t) -> <<"\\t">>;
esc($\b) -> <<"\\b">>;
esc($\f) -> <<"\\f">>;
esc(C) -> io_lib:format("\\u~4.16.0b", [C]).

%% ---------------------------------------------------------------------------------------------
%% Decoding

%% @doc Decodes one JSON text (binary or charlist of bytes). Objects come back as
%% `{[{BinaryKey, Value}]}' in document order; strings as UTF-8 binaries.
-spec decode(binary() | string()) -> {ok, json()} | {error, {atom(), non_neg_integer()}}.
decode(Text) when is_list(Text) ->
    case catch iolist_to_binary(Text) of
        B when is_binary(B) -> decode(B);
        _ -> {error, {not_a_binary, 0}}
    end;
decode(Bin) when is_binary(Bin) ->
    try
        {Value, Rest} = value(ws(Bin)),
        case ws(Rest) of
            <<>> -> {ok, Value};
            Trailing -> throw({trailing_data, Trailing})
        end
    catch
        throw:{Reason, At} when is_binary(At) -> {error, {Reason, byte_size(Bin) - byte_size(At)}}
    end.

ws(<<C, Rest/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(Rest);
ws(Bin) -> Bin.

value(<<${, Rest/binary>>) -> object(ws(Rest), []);
value(<<$[, Rest/binary>>) -> array(ws(Rest), []);
value(<<$", Rest/binary>>) -> string(Rest, []);
value(<<"true", Rest/binary>>) -> {true, Rest};
value(<<"false", Rest/binary>>) -> {false, Rest};
value(<<"null", Rest/binary>>) -> {null, Rest};
value(<<C, _/binary>> = Bin) when C =:= $-; C >= $0, C =< $9 -> number(Bin);
value(<<>> = Bin) -> throw({unexpected_end, Bin});
value(Bin) -> throw({unexpected_character, Bin}).

object(<<$}, Rest/binary>>, []) -> {{[]}, Rest};
object(<<$", Rest/binary>>, Acc) ->
    {Key, R1} = string(Rest, []),
    case ws(R1) of
        <<$:, R2/binary>> ->
            {Val, R3} = value(ws(R2)),
            case ws(R3) of
                <<$,, R4/binary>> -> object(ws(R4), [{Key, Val} | Acc]);
                <<$}, R4/binary>> -> {{lists:reverse([{Key, Val} | Acc])}, R4};
                Other -> throw({expected_comma_or_brace, Other})
            end;
        Other -> throw({expected_colon, Other})
    end;
object(Bin, _) -> throw({expected_string_key, Bin}).

array(<<$], Rest/binary>>, []) -> {[], Rest};
array(Bin, Acc) ->
    {Val, R1} = value(Bin),
    case ws(R1) of
        <<$,, R2/binary>> -> array(ws(R2), [Val | Acc]);
        <<$], R2/binary>> -> {lists:reverse([Val | Acc]), R2};
        Other -> throw({expected_comma_or_bracket, Other})
    end.

%% Acc is a reversed list of binaries and code points.
string(<<$", Rest/binary>> = At, Acc) ->
    case unicode:characters_to_binary(lists:reverse(Acc)) of
        Str when is_binary(Str) -> {Str, Rest};
        _ -> throw({invalid_utf8, At})
    end;
string(<<$\\, Rest/binary>> = At, Acc) ->
    case Rest of
        <<$", R/binary>> -> string(R, [$" | Acc]);
        <<$\\, R/binary>> -> string(R, [$\\ | Acc]);
        <<$/, R/binary>> -> string(R, [$/ | Acc]);
        <<$b, R/binary>> -> string(R, [$\b | Acc]);
        <<$f, R/binary>> -> string(R, [$\f | Acc]);
        <<$n, R/binary>> -> string(R, [$\n | Acc]);
        <<$r, R/binary>> -> string(R, [$\r | Acc]);
        <<$t, R/binary>> -> string(R, [$\t | Acc]);
        <<$u, H:4/binary, R/binary>> ->
            case hex4(H, At) of
                Hi when Hi >= 16#D800, Hi =< 16#DBFF ->
                    case R of
                        <<"\\u", L:4/binary, R2/binary>> ->
                            case hex4(L, At) of
                                Lo when Lo >= 16#DC00, Lo =< 16#DFFF ->
                                    CP = 16#10000 + ((Hi - 16#D800) bsl 10) + (Lo - 16#DC00),
                                    string(R2, [CP | Acc]);
                                _ -> throw({invalid_surrogate_pair, At})
                            end;
                        _ -> throw({invalid_surrogate_pair, At})
                    end;
                Lo when Lo >= 16#DC00, Lo =< 16#DFFF -> throw({invalid_surrogate_pair, At});
                CP -> string(R, [CP | Acc])
            end;
        _ -> throw({invalid_escape, At})
    end;
string(<<C, _/binary>> = At, _Acc) when C < 16#20 -> throw({control_character_in_string, At});
string(<<>> = At, _Acc) -> throw({unterminated_string, At});
string(Bin, Acc) ->
    N = plain_run(Bin, 0),
    <<Run:N/binary, Rest/binary>> = Bin,
    string(Rest, [Run | Acc]).

plain_run(Bin, N) ->
    case Bin of
        <<_:N/binary, C, _/binary>> when C =/= $", C =/= $\\, C >= 16#20 -> plain_run(Bin, N + 1);
        _ -> N
    end.

hex4(H, At) ->
    try binary_to_integer(H, 16) of
        I when I >= 0 -> I;
        _ -> throw({invalid_escape, At})
    catch
        error:badarg -> throw({invalid_escape, At})
    end.

number(Bin) ->
    {Int, R1} = int_part(Bin),
    {Frac, R2} = frac_part(R1),
    {Exp, R3} = exp_part(R2),
    case {Frac, Exp} of
        {<<>>, <<>>} -> {binary_to_integer(Int), R3};
        {<<>>, _} -> {to_float(<<Int/binary, ".0", Exp/binary>>, Bin), R3};
        _ -> {to_float(<<Int/binary, Frac/binary, Exp/binary>>, Bin), R3}
    end.

to_float(Text, At) ->
    try binary_to_float(Text)
    catch error:badarg -> throw({number_out_of_range, At})
    end.

int_part(<<$-, Rest/binary>> = At) ->
    case digits1(Rest, At) of
        {<<"0">>, R} -> {<<"-0">>, R};
        {D, R} -> {<<$-, D/binary>>, R}
    end;
int_part(Bin) -> digits1(Bin, Bin).

%% `0' or a non-zero digit followed by digits (no leading zeros).
digits1(<<$0, Rest/binary>>, _At) -> {<<"0">>, Rest};
digits1(<<C, _/binary>> = Bin, _At) when C >= $1, C =< $9 -> digits(Bin, 0);
digits1(_, At) -> throw({invalid_number, At}).

digits(Bin, N) ->
    case Bin of
        <<_:N/binary, C, _/binary>> when C >= $0, C =< $9 -> digits(Bin, N + 1);
        <<D:N/binary, Rest/binary>> -> {D, Rest}
    end.

frac_part(<<$., C, _/binary>> = Bin) when C >= $0, C =< $9 ->
    <<_, Rest/binary>> = Bin,
    {D, R} = digits(Rest, 0),
    {<<$., D/binary>>, R};
frac_part(<<$., _/binary>> = Bin) -> throw({invalid_number, Bin});
frac_part(Bin) -> {<<>>, Bin}.

exp_part(<<E, Rest/binary>> = At) when E =:= $e; E =:= $E ->
    {Sign, R1} = case Rest of
                     <<$+, R/binary>> -> {<<>>, R};
                     <<$-, R/binary>> -> {<<$->>, R};
                     R -> {<<>>, R}
                 end,
    case R1 of
        <<C, _/binary>> when C >= $0, C =< $9 ->
            {D, R2} = digits(R1, 0),
            {<<$e, Sign/binary, D/binary>>, R2};
        _ -> throw({invalid_number, At})
    end;
exp_part(Bin) -> {<<>>, Bin}.
