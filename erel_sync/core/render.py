"""Render what a release node reads (`vm.args`, `sys.config`, erl_call arguments) and decode what
it answers (the `erel1:` envelope, erl_call's output).

Pure: text in, text out. The release driver (`adapters.releases.driver`) writes the rendered files
into `releases/<vsn>/` before a version boots or is hot-installed, and removes what would displace
them (`displaced_config_files`); `adapters.releases.erlcall` builds its argv and decodes results
here, so both sides are tested table-driven on canned text.

The Release config value encoding (DESIGN.md §2, docs/erel.md) for `sys.config` and
`apply_config`:
    string -> charlist, number -> number, bool -> atom, null -> undefined, list -> list,
    {"$atom": x} -> atom, {"$binary": x} -> binary, {"$tuple": [...]} -> tuple,
    any other object -> proplist with atom keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from erel_sync.core.erlterm import Atom, Binary, TermSyntaxError, parse_term, render_term
from erel_sync.model.names import VERSION_RE
from erel_sync.model.specs import ReleaseConfig, thaw

# The schema's own patterns for vm.args (schemas/release.schema.json): checked again here because
# this text is read by erlexec, where a newline or a space would smuggle in another flag.
VM_FLAG_RE = re.compile(r"[-+][A-Za-z0-9_]{1,40}\Z")
VM_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:/@{}+=-]{0,256}\Z")
# Flags the driver owns: identity (node name, cookie), and anything that would make the node
# read other files or boot something else than the release the driver installed.
MANAGED_VM_FLAGS = frozenset(
    {
        "-name",
        "-sname",
        "-setcookie",
        "-args_file",
        "-config",
        "-boot",
        "-boot_var",
        "-mode",
        "-root",
        "-progname",
        "-home",
        "-remsh",
        "-detached",
    }
)
# Anything passed inside erl_call's `-a` argument: erl_call parses it with ei_format, whose
# string syntax has no backslash escapes, so only this alphabet (versions, base64) is allowed.
RPC_ARG_RE = re.compile(r"[A-Za-z0-9._+/=:@-]{0,65536}\Z")
ENVELOPE_PREFIX = "erel1:"
HEADER = "Rendered by erel-sync from the Release config; rewritten on every install and upgrade."


class RenderError(ValueError):
    """The config cannot be rendered safely; the message names the offending key."""


# ------------------------------------------------------------------------------- config values


def json_to_term(value: Any, where: str = "$") -> Any:
    """A Release config JSON value as an `erlterm` value (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"{where}: {value!r} has no Erlang form")
        return value
    if isinstance(value, list | tuple):
        return [json_to_term(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$atom":
                if not isinstance(inner, str) or not inner:
                    raise RenderError(f"{where}: $atom needs a non-empty string")
                try:
                    return Atom(inner)
                except ValueError as exc:
                    raise RenderError(f"{where}: {exc}") from None
            if key == "$binary":
                if not isinstance(inner, str):
                    raise RenderError(f"{where}: $binary needs a string")
                return Binary(inner)
            if key == "$tuple":
                if not isinstance(inner, list | tuple):
                    raise RenderError(f"{where}: $tuple needs a list")
                return tuple(json_to_term(v, f"{where}.$tuple[{i}]") for i, v in enumerate(inner))
        for key in value:
            if not isinstance(key, str) or not key or key.startswith("$"):
                raise RenderError(f"{where}: bad key {key!r} (keys starting with $ are reserved)")
        return [(_atom(k, where), json_to_term(v, f"{where}.{k}")) for k, v in value.items()]
    raise RenderError(f"{where}: unsupported value of type {type(value).__name__}")


def _atom(name: str, where: str) -> Atom:
    try:
        return Atom(name)
    except ValueError as exc:
        raise RenderError(f"{where}: {exc}") from None


def render_sys_config(
    sys_config: Mapping[str, Any],
    *,
    includes: Sequence[str] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """`sys.config` text: `includes` (absolute paths of other config files) first, so the
    Release config and then `extra` (driver-owned settings) override them key by key."""
    merged: dict[str, dict[str, Any]] = {}
    for source in (sys_config, extra or {}):
        for app, env in source.items():
            if not isinstance(env, Mapping):
                raise RenderError(f"$.{app}: the environment of an application must be a mapping")
            merged.setdefault(app, {}).update(env)
    entries: list[str] = [render_term(path) for path in includes]
    for app in sorted(merged):
        env = merged[app]
        pairs = ",\n   ".join(
            render_term((_atom(k, f"$.{app}"), json_to_term(env[k], f"$.{app}.{k}")))
            for k in sorted(env)
        )
        entries.append(f"{{{render_term(_atom(app, '$'))},\n  [{pairs}]}}")
    return f"%% coding: utf-8\n%% {HEADER}\n[\n " + ",\n ".join(entries) + "\n].\n"


def render_vm_args(node: str, vm_args: Mapping[str, str], *, loopback_only: bool = True) -> str:
    """`vm.args` text: the driver's node name (no cookie: the node reads it from `$HOME`), then
    the Release's flags in a stable order."""
    lines = [f"## {HEADER}", f"-sname {node}"]
    if loopback_only:
        # The agent talks to its nodes on this host only; keep distribution off the network.
        lines.append("-kernel inet_dist_use_interface {127,0,0,1}")
    for flag in sorted(vm_args):
        value = vm_args[flag]
        if not isinstance(flag, str) or not VM_FLAG_RE.match(flag):
            raise RenderError(f"vm_args: bad flag {flag!r}")
        if flag in MANAGED_VM_FLAGS:
            raise RenderError(f"vm_args: {flag} is managed by erel-sync and cannot be set")
        if not isinstance(value, str) or not VM_VALUE_RE.match(value):
            raise RenderError(f"vm_args: bad value for {flag}")
        lines.append(f"{flag} {value}" if value else flag)
    return "\n".join(lines) + "\n"


def render_config_files(
    node: str, config: ReleaseConfig, *, loopback_only: bool = True
) -> dict[str, str]:
    """Both files of one version, by file name (raises `RenderError` before anything is written)."""
    return {
        "vm.args": render_vm_args(node, config.vm_args, loopback_only=loopback_only),
        "sys.config": render_sys_config(config.sys_config),
    }


# relx's start script reads `<root>/vm.args` (and sys.config) before `releases/<vsn>/`'s, renders
# `<file>.src` over `<file>` at boot (with `${VAR}`s from the environment) and copies
# `<file>.orig` over it. Each would let the artifact, not the agent, decide the node's name,
# cookie or config, so the agent owns these names too.
CONFIG_FILES = ("vm.args", "sys.config")
_ROOT_VARIANTS = ("", ".src", ".orig")
_VERSION_VARIANTS = (".src", ".orig")


def displaced_config_files(version: str) -> tuple[str, ...]:
    """Paths, relative to the release root, that the agent removes whenever it renders or boots
    `version`: anything relx's start script would read instead of the agent's
    `releases/<vsn>/vm.args` and `sys.config`, or render or copy over them."""
    if not VERSION_RE.fullmatch(version):  # `$` alone would let a trailing newline through
        raise RenderError(f"bad release version {version[:70]!r}")
    at_root = [f"{name}{suffix}" for name in CONFIG_FILES for suffix in _ROOT_VARIANTS]
    beside = [f"{name}{suffix}" for name in CONFIG_FILES for suffix in _VERSION_VARIANTS]
    return (*at_root, *(f"releases/{version}/{name}" for name in beside))


def encode_config_payload(sys_config: Mapping[str, Any]) -> str:
    """The `apply_config` argument: base64 of the canonical JSON of the application env."""
    raw = json.dumps(thaw(sys_config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    for app, env in sys_config.items():  # same checks as sys.config, so both fail alike
        json_to_term(env, f"$.{app}")
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


# ---------------------------------------------------------------------------------- erl_call


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
    return [erl_call, "-R", "-sname", node, "-timeout", str(max(1, timeout)), "-a", text]


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
