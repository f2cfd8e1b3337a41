"""The RPC wire codec between the agent and a release node: erl_call's argv, and the decoding of
what erl_call prints (the `erel1:` envelope, `{badrpc, ...}`, connection failures) into an
`RpcOutcome`.

Pure: text in, text out. `adapters.releases.erlcall` builds its argv and decodes every answer
here; `core.facts` reads the decoded values. The contract itself (one charlist
`"erel1:" ++ Base64(JSON)` per call) is documented in docs/erel.md and implemented by
`erlang/erel/src/erel_rpc.erl`. Tested on canned erl_call output (tests/unit/test_render.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from erel_sync.core.erlterm import Atom, TermSyntaxError, parse_term, render_term
from erel_sync.core.nodeconfig import RenderError, is_long_name, json_to_term
from erel_sync.model.specs import thaw

# Anything passed inside erl_call's `-a` argument: erl_call parses it with ei_format, whose
# string syntax has no backslash escapes, so only this alphabet (versions, base64) is allowed.
RPC_ARG_RE = re.compile(r"[A-Za-z0-9._+/=:@-]{0,65536}\Z")
ENVELOPE_PREFIX = "erel1:"


def encode_config_payload(sys_config: Mapping[str, Any]) -> str:
    """The `apply_config` argument: base64 of the canonical JSON of the application env."""
    raw = json.dumps(thaw(sys_config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    for app, env in sys_config.items():  # same checks as sys.config, so both fail alike
        json_to_term(env, f"$.{app}")
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


def render_rpc_call(module: str, function: str, args: Sequence[str | Atom]) -> str:
    """The text of erl_call's `-a` option: `Mod Fun [Args]`, strings as charlists."""
    parts: list[str] = []
    for arg in args:
        text = arg.name if isinstance(arg, Atom) else arg
        if not RPC_ARG_RE.match(text) or (isinstance(arg, Atom) and not text):
            raise RenderError(f"unsafe RPC argument {text[:40]!r}")
        parts.append(render_term(arg))
    for name in (module, function):
        if not re.fullmatch(r"[a-z][A-Za-z0-9_]{0,62}", name):
            raise RenderError(f"bad module or function name {name!r}")
    return f"{module} {function} [{','.join(parts)}]"


def erl_call_argv(
    erl_call: str,
    node: str,
    call: tuple[str, str, Sequence[str | Atom]],
    *,
    timeout: int,
) -> list[str]:
    """argv of one RPC; no `-c`: erl_call reads the cookie from `$HOME/.erlang.cookie`."""
    module, function, args = call
    text = render_rpc_call(module, function, args)
    flag = "-name" if is_long_name(node) else "-sname"  # a clustered node has a long name
    return [erl_call, "-R", flag, node, "-timeout", str(max(1, timeout)), "-a", text]


class RpcStatus(StrEnum):
    OK = "ok"  # erel answered {"ok":true,...}
    ERROR = "error"  # erel answered {"ok":false,"error":...}: the node is fine, the step failed
    BADRPC = "badrpc"  # the call itself failed in the node (undef module, crash, timeout)
    UNREACHABLE = "unreachable"  # erl_call could not connect (node down, wrong cookie, no epmd)
    GARBAGE = "garbage"  # anything else


@dataclass(frozen=True)
class RpcOutcome:
    status: RpcStatus
    value: Any = None
    error: str = ""
    raw: str = ""  # what erl_call printed (bounded), for messages and plain-term calls


_ENVELOPE_RE = re.compile(r'"erel1:([^"]*)"\s*\Z')


def decode_envelope(text: str) -> RpcOutcome:
    """`"erel1:" ++ Base64(JSON)` as erl_call prints it (quoted) or bare."""
    text = text.strip()
    m = _ENVELOPE_RE.match(text)
    if m:
        body = m.group(1)
    elif text.startswith(ENVELOPE_PREFIX):
        body = text[len(ENVELOPE_PREFIX) :]
    else:
        return RpcOutcome(RpcStatus.GARBAGE, error="not an erel1 envelope", raw=text[:512])
    try:
        doc = json.loads(base64.b64decode("".join(body.split()), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return RpcOutcome(RpcStatus.GARBAGE, error="undecodable erel1 envelope", raw=text[:512])
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        return RpcOutcome(RpcStatus.GARBAGE, error="erel1 envelope without ok", raw=text[:512])
    if doc["ok"]:
        return RpcOutcome(RpcStatus.OK, value=doc.get("value"), raw=text[:512])
    error = doc.get("error")
    return RpcOutcome(RpcStatus.ERROR, error=str(error)[:512] if error else "error", raw=text[:512])


def decode_erl_call(exit_code: int, stdout: str, stderr: str, *, envelope: bool) -> RpcOutcome:
    """Classify one erl_call run. erl_call exits 0 even for `{badrpc, ...}`: read stdout."""
    out = stdout.strip()
    if exit_code != 0:
        detail = (stderr.strip() or out or f"erl_call exited {exit_code}")[-512:]
        return RpcOutcome(RpcStatus.UNREACHABLE, error=detail, raw=out[:512])
    if out.startswith("{badrpc"):
        return RpcOutcome(RpcStatus.BADRPC, error=out[:512], raw=out[:512])
    if envelope:
        return decode_envelope(out)
    try:
        return RpcOutcome(RpcStatus.OK, value=parse_term(out), raw=out[:512])
    except (TermSyntaxError, ValueError, IndexError):
        return RpcOutcome(RpcStatus.GARBAGE, error="unparsable erl_call output", raw=out[:512])
