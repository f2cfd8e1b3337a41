"""`erel-sync status|members|wait|stop …` input handling and failures that need no cluster (one
line, an exit code, never a traceback: the guard in `cli.main`), and the local control socket's
file mode (the e2e tests drive the rest against real agents)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from erel_sync.adapters.broker.messages import BrokerError
from erel_sync.agent.control import serve_socket
from erel_sync.cli.main import describe
from erel_sync.core.snapshot import generate_key
from erel_sync.model.problems import ConfigError, Problem
from tests.cli import erel_sync

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return erel_sync(*args, env={"EREL_AMQP_URL": DEAD_BROKER})


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status"], 4, "no broker reachable"),
        (["wait", "--revision", "abcdef1"], 4, "no broker reachable"),
        (["wait", "--revision", "not-a-sha"], 2, "is not a git sha"),
        (["wait", "--revision", "abcdef"], 2, "7 to 40 hex digits"),
        (["wait", "--revision", "abcdef1", "--timeout", "soon"], 2, "--timeout"),
        (["stop", "hello", "--host", "a", "--group", "b"], 2, "at most one of"),
        (["stop", "hello", "--host", "a"], 2, "remote commands are signed"),
        (["stop", "hello", "--socket", "/nonexistent/agent.sock"], 4, "local agent at"),
    ],
)
def test_one_line_errors_and_exit_codes(args: list[str], code: int, message: str) -> None:
    out = run(*args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "guest:guest@" not in out.stderr


def test_an_escaped_error_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """The guard in `cli.main`: an exception no command handles (here the publisher's
    SourceError for a path that is no repository) is one line, not a traceback; EREL_DEBUG
    shows the traceback."""
    key = tmp_path / "p.key"
    key.write_bytes(generate_key()[0])
    args = ["publisher", "--repo", str(tmp_path / "none"), "--key", str(key)]
    args += ["--state-dir", str(tmp_path / "state")]
    out = run(*args)
    assert out.returncode == 4, out.stderr
    assert out.stderr == f"erel-sync: {tmp_path / 'none'}: not a git repository\n"
    debug = erel_sync(*args, env={"EREL_DEBUG": "1"})
    assert debug.returncode == 4 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        (OSError(28, "No space left on device", "/var/x"), "/var/x: No space left on device", 4),
        (
            ConfigError([Problem("a.yaml", 1, 2, "$.x", "bad")]),
            "invalid configuration: a.yaml:1:2: $.x: bad",
            2,
        ),
        (BrokerError("amqp://u:secret@h/: refused"), "broker: amqp://u:***@h/: refused", 4),
        (KeyError("x"), "internal error: KeyError: 'x' (EREL_DEBUG=1 shows the traceback)", 4),
        (
            asyncio.CancelledError(),
            "the broker connection was lost (its pending calls were cancelled)",
            4,
        ),
    ],
)
def test_escaped_errors_are_described_in_one_bounded_line(
    error: BaseException, line: str, code: int
) -> None:
    assert describe(error) == (line, code)
    assert "\n" not in describe(RuntimeError("a\nb" * 400))[0]
    assert len(describe(RuntimeError("x" * 5000))[0]) <= 500


async def _socket_mode(path: Path, group: str | None) -> tuple[int, int, bytes]:
    async def echo(line: bytes) -> bytes:
        return line.strip().upper()

    server = await serve_socket(path, echo, group=group)
    try:
        st = os.stat(path)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"command": "status"}\n')
        answer = await reader.readline()
        writer.close()
        return stat.S_IMODE(st.st_mode), st.st_gid, answer
    finally:
        server.close()


def test_control_socket_is_private_or_group_shared(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    path.write_text("stale socket of a killed agent")
    mode, _, answer = asyncio.run(_socket_mode(path, None))
    assert mode == 0o600
    assert json.loads(answer.decode().lower()) == {"command": "status"}
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    mode, gid, _ = asyncio.run(_socket_mode(tmp_path / "b.sock", group))
    assert (mode, gid) == (0o660, os.getgid())
    assert socket.AF_UNIX  # the platform has Unix sockets (the agent requires them)


def test_control_sockets_started_together_leave_the_process_umask_alone(tmp_path: Path) -> None:
    # The umask is the whole process's: a child started after a leaked 0177 (a browser in the
    # e2e tests) made directories it could not enter and died at start.
    async def echo(line: bytes) -> bytes:
        return line

    async def start_four() -> list[int]:
        paths = [tmp_path / f"{i}.sock" for i in range(4)]
        servers = await asyncio.gather(*(serve_socket(p, echo) for p in paths))
        for server in servers:
            server.close()
            await server.wait_closed()
        return [stat.S_IMODE(os.stat(p).st_mode) for p in paths]

    before = os.umask(0o022)
    try:
        assert asyncio.run(start_four()) == [0o600] * 4
        assert os.umask(0o022) == 0o022
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.sock" for i in range(4)]
    finally:
        os.umask(before)
