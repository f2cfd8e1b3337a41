"""Render what a release node reads at boot: `vm.args` and `sys.config`, and name the files relx
would read instead of them.

Pure: text in, text out. The release driver's file layer (`adapters.releases.files`) writes the
rendered files into `releases/<vsn>/` before a version boots or is hot-installed, and removes
what would displace them (`displaced_config_files`); `core.rpccodec` reuses `json_to_term` to
check the live `apply_config` payload the same way. Tested table-driven on canned text
(tests/unit/test_render.py).

The Release config value encoding (docs/erel.md, "value encoding") for `sys.config` and
`apply_config`:
    string -> charlist, number -> number, bool -> atom, null -> undefined, list -> list,
    {"$atom": x} -> atom, {"$binary": x} -> binary, {"$tuple": [...]} -> tuple,
    any other object -> proplist with atom keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from erel_sync.core.erlterm import Atom, Binary, render_term
from erel_sync.model.names import VERSION_RE
from erel_sync.model.specs import ReleaseConfig

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


def is_long_name(node: str) -> bool:
    """`name@host` with a dotted host or an IP address: `-name`; otherwise `-sname`."""
    host = node.partition("@")[2]
    return "." in host or ":" in host


def render_vm_args(
    node: str,
    vm_args: Mapping[str, str],
    *,
    loopback_only: bool = True,
    ports: tuple[int, int] | None = None,
) -> str:
    """`vm.args` text: the driver's node name (no cookie: the node reads it from `$HOME`), then
    the Release's flags in a stable order. A clustered node has a long name, listens on the
    network (in `ports`, when given) and is not loopback-only."""
    lines = [f"## {HEADER}", f"{'-name' if is_long_name(node) else '-sname'} {node}"]
    if loopback_only:
        # The agent talks to its nodes on this host only; keep distribution off the network.
        lines.append("-kernel inet_dist_use_interface {127,0,0,1}")
    if ports is not None:
        lines.append(f"-kernel inet_dist_listen_min {ports[0]} inet_dist_listen_max {ports[1]}")
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
    node: str,
    config: ReleaseConfig,
    *,
    loopback_only: bool = True,
    ports: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Both files of one version, by file name (raises `RenderError` before anything is written)."""
    return {
        "vm.args": render_vm_args(node, config.vm_args, loopback_only=loopback_only, ports=ports),
        "sys.config": render_sys_config(config.sys_config),
    }


def node_in_vm_args(text: str) -> str | None:
    """The node name a rendered `vm.args` boots with (its `-name` or `-sname` line)."""
    for line in text.splitlines():
        flag, _, value = line.strip().partition(" ")
        if flag in ("-name", "-sname") and value.strip():
            return value.strip()
    return None


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
