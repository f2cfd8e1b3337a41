"""OS processes of a release node: start it as a daemon, find its processes, wait, kill.

Called by `adapters.releases.driver`. Lives in `adapters` because it spawns and signals processes.
Linux only: processes are found through `/proc`.

Start: what `bin/<rel> daemon` does, minus its `sleep 1` polling loop and the cookie it puts on
erl_call's command line: `run_erl -daemon PIPE LOG "exec bin/<rel>-<vsn> console"`, in a new
session, with `HOME` pointing at the release's cookie. run_erl detaches (fork + setsid), so the
node is never a child of the agent and survives an agent crash or SIGKILL. The versioned script
`bin/<rel>-<vsn>` picks the version to boot (its boot file); `VMARGS_PATH` and
`RELX_CONFIG_PATH` name the version's rendered `vm.args` and `sys.config`, because the script
would otherwise prefer a `<root>/vm.args` or `<root>/sys.config` that a tarball shipped
(`node_env`).

A process belongs to a release root when its argv has `-root <root>` (the VM), or is run_erl or
a start script with an argument inside the root. Nothing is ever signalled by name, only by a
pid whose command line was just checked against the root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from erel_sync.adapters.releases.erlcall import child_env
from erel_sync.core import reasons

PROC = Path("/proc")


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # a zombie or a kernel thread
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


def _is_zombie(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    # `pid (comm) S ...`: comm may contain spaces or parentheses; the state follows the last ')'.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("Z", "X", "")


def belongs_to(argv: list[str], root: Path) -> bool:
    prefix = str(root).rstrip("/") + "/"
    for i, arg in enumerate(argv[:-1]):
        if arg == "-root" and argv[i + 1].rstrip("/") == str(root).rstrip("/"):
            return True
    exe = os.path.basename(argv[0]) if argv else ""
    if exe == "run_erl":
        return any(a.startswith(prefix) for a in argv[1:4])
    return any(a.startswith(prefix + "bin/") for a in argv[:2])


def node_pids(root: Path) -> list[int]:
    """Live processes of the release installed in `root` (VM, run_erl, start script)."""
    me = os.getpid()
    found: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        argv = cmdline(pid)
        if argv and belongs_to(argv, root) and not _is_zombie(pid):
            found.append(pid)
    return sorted(found)


def pid_belongs(pid: int, root: Path) -> bool:
    argv = cmdline(pid)
    return bool(argv) and belongs_to(argv or [], root) and not _is_zombie(pid)


def kill_pids(pids: Iterable[int], root: Path, sig: int = signal.SIGKILL) -> list[int]:
    """Signal each pid that still belongs to `root` (re-checked right before); returns them."""
    hit: list[int] = []
    for pid in pids:
        if pid_belongs(pid, root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                hit.append(pid)
    return hit


async def wait_gone(root: Path, deadline: float, pids: Iterable[int] | None = None) -> bool:
    """Poll until no process of `root` is left (or only none of `pids`); False at the deadline."""
    watch = list(pids) if pids is not None else None
    while True:
        alive = [p for p in watch if pid_belongs(p, root)] if watch is not None else node_pids(root)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)


async def spawn_daemon(
    root: Path, release: str, version: str, *, home: Path, pipe: Path, logs: Path
) -> None:
    """Start the node of `version` detached from the agent; returns once run_erl forked."""
    run_erl, script = _prepare(root, release, version, pipe, logs)
    command = f"exec '{script}' console"  # paths come from validated names and versions
    proc = await asyncio.create_subprocess_exec(
        str(run_erl),
        "-daemon",
        f"{pipe}/",
        f"{logs}/",
        command,
        cwd=str(root),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=node_env(root, version, home),
        start_new_session=True,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise reasons.driver_error(
            reasons.StartFailed, f"run_erl exited {proc.returncode}", out.decode(errors="replace")
        )


def node_env(root: Path, version: str, home: Path) -> dict[str, str]:
    """The node's environment: `child_env` (nothing inherited that changes how a node runs:
    no `ERL_FLAGS`, no `RELX_*`, never `RELX_REPLACE_OS_VARS`, which would substitute `${VAR}`s
    into the rendered files) plus the paths of the version's rendered config files, so relx's
    start script reads exactly those."""
    rendered = root / "releases" / version
    return child_env(
        home,
        {
            "TERM": "dumb",
            "RUN_ERL_DISABLE_FLOWCNTRL": "true",
            "VMARGS_PATH": str(rendered / "vm.args"),
            "RELX_CONFIG_PATH": str(rendered / "sys.config"),
        },
    )


def _prepare(root: Path, release: str, version: str, pipe: Path, logs: Path) -> tuple[Path, Path]:
    for name in ("vm.args", "sys.config"):
        if not (root / "releases" / version / name).is_file():
            # The script would fail on its own, with a message that only reaches the node's log.
            raise reasons.driver_error(
                reasons.StartFailed, f"releases/{version}/{name} was never rendered"
            )
    script = root / "bin" / f"{release}-{version}"
    if not script.is_file():
        script = root / "bin" / release  # relx always writes both; older layouts only this
    erts = _erts_bin(root)
    run_erl = erts / "run_erl"
    if not run_erl.is_file():
        raise reasons.driver_error(reasons.StartFailed, f"no run_erl in {erts}")
    pipe.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    return run_erl, script


def _erts_bin(root: Path) -> Path:
    try:
        erts_vsn = (root / "releases" / "start_erl.data").read_text().split()[0]
        candidate = root / f"erts-{erts_vsn}" / "bin"
        if candidate.is_dir():
            return candidate
    except (OSError, IndexError):
        pass
    found = sorted(root.glob("erts-*/bin"))
    if not found:
        raise reasons.driver_error(reasons.StartFailed, f"no erts-*/bin in {root}")
    return found[-1]


def log_tail(root: Path, limit: int = reasons.TAIL_LIMIT) -> str:
    """The end of the newest run_erl log (`log/erlang.log.N`), for failure messages."""
    logs = sorted(
        (root / "log").glob("erlang.log.*"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    if not logs:
        return ""
    try:
        with logs[0].open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit * 2))
            return reasons.tail(f.read(), limit)
    except OSError:
        return ""


def root_alive(root: Path, pid: int | None) -> bool:
    """A VM of this release root runs: the recorded pid (checked) or any process found."""
    return (pid is not None and pid_belongs(pid, root)) or bool(node_pids(root))


def is_vm(pid: int) -> bool:
    """The beam process itself (run_erl and the start script carry no `-root`)."""
    return "-root" in (cmdline(pid) or [])


def stop_nodes_under(releases_dir: Path) -> None:
    """Stop every release VM installed under `releases_dir`: SIGTERM (a clean init:stop), then
    SIGKILL what is left at the deadline. PIDs are re-checked against their root each time."""
    roots = [r for r in sorted(releases_dir.glob("*")) if r.is_dir()]
    for root in roots:
        kill_pids(node_pids(root), root, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for root in roots:
        if not asyncio.run(wait_gone(root, deadline)):
            kill_pids(node_pids(root), root, signal.SIGKILL)
