"""core.nodeconfig, core.rpccodec and core.erlterm: vm.args, sys.config, erl_call argv and output, table-driven.

Every rendered term is parsed back (`parse_term`) to show that escaping holds: what goes in as
one string comes out as one string, whatever characters it carried.
"""

from __future__ import annotations

import base64
import json
from types import MappingProxyType
from typing import Any

import pytest

from erel_sync.core import reasons
from erel_sync.core.erlterm import (
    Atom,
    Binary,
    ImproperList,
    Opaque,
    TermSyntaxError,
    parse_term,
    render_atom,
    render_term,
)
from erel_sync.core.nodeconfig import (
    RenderError,
    displaced_config_files,
    json_to_term,
    render_config_files,
    render_sys_config,
    render_vm_args,
)
from erel_sync.core.rpccodec import (
    RpcStatus,
    decode_envelope,
    decode_erl_call,
    encode_config_payload,
    erl_call_argv,
    render_rpc_call,
)
from erel_sync.model.specs import ReleaseConfig, freeze


def envelope(doc: Any, quoted: bool = True) -> str:
    text = "erel1:" + base64.b64encode(json.dumps(doc).encode()).decode()
    return f'"{text}"' if quoted else text


# ------------------------------------------------------------------------------ terms


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "undefined"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-7, "-7"),
        (1.5, "1.5"),
        (1.0, "1.0"),
        (1e20, "1.0e20"),
        (2.5e-7, "2.5e-7"),
        ("hi", '"hi"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak\ttab\rcr", '"line\\nbreak\\ttab\\rcr"'),
        ("nul\x00", '"nul\\x{0}"'),
        ("café", '"caf\\x{E9}"'),
        ("😀", '"\\x{1F600}"'),
        (Atom("ok"), "ok"),
        (Atom("Hello"), "'Hello'"),
        (Atom("end"), "'end'"),
        (Atom("a b"), "'a b'"),
        (Atom("it's"), "'it\\'s'"),
        (Atom("node@host"), "node@host"),
        (Binary("x"), '<<"x"/utf8>>'),
        (Binary(""), "<<>>"),
        (b"\x01\x02", "<<1,2>>"),
        ((1, Atom("a")), "{1,a}"),
        ([], "[]"),
        ([1, [2]], "[1,[2]]"),
    ],
)
def test_render_term(value: Any, text: str) -> None:
    assert render_term(value) == text


@pytest.mark.parametrize(
    "value",
    [
        'x"]}]. os:cmd("rm -rf /").',
        "'); halt(). %",
        "\\x{41}",
        "a\nb\n].\n[",
        "%% comment",
        "\u2028\x7f\x1b",
        Atom("a', evil"),
        Atom("\\'"),
        Binary('"/utf8>>, <<"'),
        [Atom("x"), ("k", Binary("v"), 1.25, Atom("undefined"))],
    ],
)
def test_rendered_terms_parse_back_unchanged(value: Any) -> None:
    """Injection attempts stay inside their literal: render -> parse is the identity."""
    assert parse_term(render_term(value)) == value


def test_render_rejects_what_has_no_erlang_form() -> None:
    with pytest.raises(ValueError):
        render_term(float("nan"))
    with pytest.raises(ValueError):
        render_term(Opaque("<0.1.0>"))
    with pytest.raises(TypeError):
        render_term(object())
    with pytest.raises(ValueError):
        render_atom("a" * 256)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("ok", Atom("ok")),
        ("ok.", Atom("ok")),
        ('"12345"', "12345"),
        ("{badrpc,nodedown}", (Atom("badrpc"), Atom("nodedown"))),
        ("[1|2]", ImproperList((1,), 2)),
        ("#Bin<1,2,3>", b"\x01\x02\x03"),
        ("<<104,105>>", b"hi"),
        ('<<"hé"/utf8>>', Binary("hé")),
        ("#{a => 1}", {Atom("a"): 1}),
        ("<0.90.0>", Opaque("<0.90.0>")),
        ("#Ref<0.1.2.3>", Opaque("#Ref<0.1.2.3>")),
        ("$a", 97),
        ("$\\n", 10),
        ("16#ff", 255),
        ("-1.5e3", -1500.0),
        ('"a" "b"', "ab"),
        ("'quoted atom'", Atom("quoted atom")),
        ("%% comment\n[a, % trailing\n b].", [Atom("a"), Atom("b")]),
        ('"\\101\\x41\\x{42}\\^A"', "AAB\x01"),
    ],
)
def test_parse_term(text: str, value: Any) -> None:
    assert parse_term(text) == value


@pytest.mark.parametrize("text", ["", "{a", "[a,]", '"open', "a b", "{a}}", "<<300>>", "@"])
def test_parse_term_rejects_garbage(text: str) -> None:
    with pytest.raises(TermSyntaxError):
        parse_term(text)


# ------------------------------------------------------------------------------ config values


@pytest.mark.parametrize(
    ("value", "term"),
    [
        ("hi", "hi"),
        (3, 3),
        (True, True),
        (None, None),
        ([1, "a"], [1, "a"]),
        ({"$atom": "info"}, Atom("info")),
        ({"$binary": "secret"}, Binary("secret")),
        ({"$tuple": [1, {"$atom": "a"}]}, (1, Atom("a"))),
        ({"port": 8080, "host": "h"}, [(Atom("port"), 8080), (Atom("host"), "h")]),
        (freeze({"nested": {"k": [1]}}), [(Atom("nested"), [(Atom("k"), [1])])]),
    ],
)
def test_json_to_term(value: Any, term: Any) -> None:
    assert json_to_term(value) == term


@pytest.mark.parametrize(
    "value",
    [
        {"$atom": 1},
        {"$atom": ""},
        {"$atom": "a" * 300},
        {"$binary": 1},
        {"$tuple": "x"},
        {"$foo": 1, "b": 2},
        float("nan"),
        float("inf"),
        {1: 2},
        object(),
    ],
)
def test_json_to_term_refuses(value: Any) -> None:
    with pytest.raises(RenderError):
        json_to_term(value)


def test_sys_config_is_a_valid_sorted_term() -> None:
    text = render_sys_config(
        {"hello": {"greeting": "hi", "level": {"$atom": "debug"}}, "app_b": {"n": 1}},
        extra={"erel": {"health_timeout_ms": 5000}},
    )
    assert text.startswith("%% coding: utf-8\n")
    assert parse_term(text) == [
        (Atom("app_b"), [(Atom("n"), 1)]),
        (Atom("erel"), [(Atom("health_timeout_ms"), 5000)]),
        (Atom("hello"), [(Atom("greeting"), "hi"), (Atom("level"), Atom("debug"))]),
    ]
    assert text == render_sys_config(
        {"app_b": {"n": 1}, "hello": {"level": {"$atom": "debug"}, "greeting": "hi"}},
        extra={"erel": {"health_timeout_ms": 5000}},
    )


def test_sys_config_injection_stays_a_string() -> None:
    evil = '"}]}, {kernel, [{evil, true}]}, {x, [{y, "'
    text = render_sys_config({"hello": {"greeting": evil}})
    assert parse_term(text) == [(Atom("hello"), [(Atom("greeting"), evil)])]


def test_sys_config_includes_come_first() -> None:
    text = render_sys_config({"a": {"k": 1}}, includes=["/abs/base.config"])
    assert parse_term(text) == ["/abs/base.config", (Atom("a"), [(Atom("k"), 1)])]


def test_sys_config_empty_and_bad_env() -> None:
    assert parse_term(render_sys_config({})) == []
    with pytest.raises(RenderError):
        render_sys_config({"a": [1]})


# ------------------------------------------------------------------------------------ vm.args


def test_vm_args_has_node_and_sorted_flags_and_no_cookie() -> None:
    text = render_vm_args("hello_h_0123@localhost", {"+K": "true", "+A": "30", "-hidden": ""})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "-sname hello_h_0123@localhost",
        "-kernel inet_dist_use_interface {127,0,0,1}",
        "+A 30",
        "+K true",
        "-hidden",
    ]
    assert "setcookie" not in text


def test_vm_args_without_loopback() -> None:
    assert "inet_dist_use_interface" not in render_vm_args("n@h", {}, loopback_only=False)


@pytest.mark.parametrize(
    "vm_args",
    [
        {"-setcookie": "x"},
        {"-sname": "other"},
        {"-name": "other@host"},
        {"-args_file": "/etc/passwd"},
        {"-config": "/tmp/evil"},
        {"-boot": "x"},
        {"+K": "true\n-setcookie stolen"},
        {"+K": "true -setcookie x"},
        {"+K": "a#b"},
        {"+K\n-setcookie": "x"},
        {"K": "true"},
        {"+" + "K" * 41: "x"},
        {"+K": "x" * 257},
    ],
)
def test_vm_args_refuses_managed_and_unsafe(vm_args: dict[str, str]) -> None:
    with pytest.raises(RenderError):
        render_vm_args("n@h", vm_args)


def test_render_config_files_from_release_config() -> None:
    config = ReleaseConfig(
        sys_config=freeze({"hello": {"greeting": "hi"}}),
        vm_args=MappingProxyType({"+K": "true"}),
    )
    files = render_config_files("n@localhost", config)
    assert set(files) == {"vm.args", "sys.config"}
    assert "+K true" in files["vm.args"]
    assert parse_term(files["sys.config"]) == [(Atom("hello"), [(Atom("greeting"), "hi")])]


def test_displaced_config_files_are_what_relx_would_read_instead() -> None:
    assert displaced_config_files("0.2.0") == (
        "vm.args",
        "vm.args.src",
        "vm.args.orig",
        "sys.config",
        "sys.config.src",
        "sys.config.orig",
        "releases/0.2.0/vm.args.src",
        "releases/0.2.0/vm.args.orig",
        "releases/0.2.0/sys.config.src",
        "releases/0.2.0/sys.config.orig",
    )
    # Never the agent's own rendered files.
    assert not {"releases/0.2.0/vm.args", "releases/0.2.0/sys.config"} & set(
        displaced_config_files("0.2.0")
    )
    for bad in ("../0.1.0", "0.1.0/..", "", "a b", "0.1.0\n"):
        with pytest.raises(RenderError):
            displaced_config_files(bad)


def test_config_payload_round_trips() -> None:
    payload = encode_config_payload(freeze({"hello": {"greeting": "hi", "n": [1, 2]}}))
    assert json.loads(base64.b64decode(payload)) == {"hello": {"greeting": "hi", "n": [1, 2]}}
    with pytest.raises(RenderError):
        encode_config_payload({"hello": {"bad": {"$atom": 3}}})


# ----------------------------------------------------------------------------------- erl_call


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (("erel_rpc", "status", []), "erel_rpc status []"),
        (("erel_rpc", "unpack", ["0.2.0"]), 'erel_rpc unpack ["0.2.0"]'),
        (
            ("erel_rpc", "check", [Atom("hello_health"), Atom("check")]),
            "erel_rpc check [hello_health,check]",
        ),
        (("erel_rpc", "apply_config", ["eyJhIjp7fX0="]), 'erel_rpc apply_config ["eyJhIjp7fX0="]'),
        (("init", "stop", []), "init stop []"),
    ],
)
def test_render_rpc_call(call: tuple[str, str, list[Any]], text: str) -> None:
    assert render_rpc_call(*call) == text


@pytest.mark.parametrize(
    "call",
    [
        ("erel_rpc", "unpack", ['0.2.0"], os:cmd("id")']),
        ("erel_rpc", "unpack", ["a b"]),
        ("erel_rpc", "unpack", ["x\n"]),
        ("erel_rpc", "check", [Atom("")]),
        ("erel rpc", "status", []),
        ("erel_rpc", "status; halt", []),
        ("Erel", "status", []),
    ],
)
def test_render_rpc_call_refuses_unsafe(call: tuple[str, str, list[Any]]) -> None:
    with pytest.raises(RenderError):
        render_rpc_call(*call)


def test_erl_call_argv_has_no_cookie() -> None:
    argv = erl_call_argv("/usr/bin/erl_call", "n@localhost", ("erel_rpc", "status", []), timeout=3)
    assert argv == [
        "/usr/bin/erl_call",
        "-R",
        "-sname",
        "n@localhost",
        "-timeout",
        "3",
        "-a",
        "erel_rpc status []",
    ]
    assert "-c" not in argv


@pytest.mark.parametrize(
    ("exit_code", "stdout", "stderr", "status", "value", "error"),
    [
        (
            0,
            envelope({"ok": True, "value": {"healthy": True}}),
            "",
            RpcStatus.OK,
            {"healthy": True},
            "",
        ),
        (0, envelope({"ok": True, "value": ["0.1.0"]}) + "\n", "", RpcStatus.OK, ["0.1.0"], ""),
        (
            0,
            envelope({"ok": False, "error": "no_matching_relup"}),
            "",
            RpcStatus.ERROR,
            None,
            "no_matching_relup",
        ),
        (0, envelope({"ok": True, "value": 1}, quoted=False), "", RpcStatus.OK, 1, ""),
        (
            0,
            "{badrpc, {'EXIT', {undef, [{erel_rpc, status, [], []}]}}}",
            "",
            RpcStatus.BADRPC,
            None,
            "{badrpc",
        ),
        (0, "{badrpc,nodedown}", "", RpcStatus.BADRPC, None, "nodedown"),
        (
            1,
            "",
            "erl_call: failed to connect to node n@localhost\n",
            RpcStatus.UNREACHABLE,
            None,
            "failed to connect",
        ),
        (1, "", "", RpcStatus.UNREACHABLE, None, "exited 1"),
        (0, "hello", "", RpcStatus.GARBAGE, None, "not an erel1"),
        (0, "#Bin<101,114,101,108>", "", RpcStatus.GARBAGE, None, "not an erel1"),
        (0, '"erel1:!!!notbase64"', "", RpcStatus.GARBAGE, None, "undecodable"),
        (0, envelope({"value": 1}), "", RpcStatus.GARBAGE, None, "without ok"),
        (0, envelope([1, 2]), "", RpcStatus.GARBAGE, None, "without ok"),
        (
            0,
            '"erel1:' + base64.b64encode(b"\xff\xfe").decode() + '"',
            "",
            RpcStatus.GARBAGE,
            None,
            "undecodable",
        ),
        (0, "", "", RpcStatus.GARBAGE, None, "not an erel1"),
    ],
)
def test_decode_erl_call_envelope(  # noqa: PLR0917
    exit_code: int, stdout: str, stderr: str, status: RpcStatus, value: Any, error: str
) -> None:
    outcome = decode_erl_call(exit_code, stdout, stderr, envelope=True)
    assert outcome.status is status
    assert outcome.value == value
    assert error in outcome.error


@pytest.mark.parametrize(
    ("stdout", "status", "value"),
    [
        ("ok", RpcStatus.OK, Atom("ok")),
        ('"4242"', RpcStatus.OK, "4242"),
        ("{state,2,[1,2]}", RpcStatus.OK, (Atom("state"), 2, [1, 2])),
        ("#Bin<1,2>", RpcStatus.OK, b"\x01\x02"),
        ("{badrpc,timeout}", RpcStatus.BADRPC, None),
        ("=ERROR REPORT==== {", RpcStatus.GARBAGE, None),
    ],
)
def test_decode_erl_call_plain(stdout: str, status: RpcStatus, value: Any) -> None:
    outcome = decode_erl_call(0, stdout, "", envelope=False)
    assert outcome.status is status
    assert outcome.value == value


def test_decode_envelope_bounds_raw_and_error() -> None:
    outcome = decode_envelope(envelope({"ok": False, "error": "x" * 5000}))
    assert outcome.status is RpcStatus.ERROR
    assert len(outcome.error) <= 512
    assert len(outcome.raw) <= 512


# ------------------------------------------------------------------------------------ reasons


def test_errors_are_classified_bounded_and_scrubbed() -> None:
    transient = reasons.driver_error(reasons.NodeUnreachable, "down", "x" * 10_000)
    assert isinstance(transient, reasons.TransientError)
    assert transient.transient and transient.retry_after
    assert len(transient.output_tail) <= reasons.TAIL_LIMIT
    stalled = reasons.driver_error(reasons.UnsafeArchive, "bad " * 1000)
    assert isinstance(stalled, reasons.StalledError)
    assert not stalled.transient and stalled.retry_after is None
    assert len(stalled.message) <= reasons.MESSAGE_LIMIT
    leaky = reasons.driver_error(
        reasons.StartFailed,
        "erl_call -c SECRETCOOKIE -a x",
        "Exec: erlexec -setcookie SECRET2 ...\nRELX_COOKIE=SECRET3\ncookie: 'SECRET4'",
    )
    for secret in ("SECRETCOOKIE", "SECRET2", "SECRET3", "SECRET4"):
        assert secret not in leaky.message
        assert secret not in leaky.output_tail
    assert leaky.to_json()["reason"] == reasons.StartFailed


def test_tail_keeps_the_end() -> None:
    text = "a" * 5000 + "THE END"
    assert reasons.tail(text).endswith("THE END")
    assert reasons.tail(text.encode()).endswith("THE END")
    assert len(reasons.tail(text)) <= reasons.TAIL_LIMIT
