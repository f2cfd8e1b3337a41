"""`erel-sync status|members|wait|stop …` input handling and failures that need no cluster, and
the local control socket's file mode (the e2e tests drive the rest against real agents)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from erel_sync.agent.control import serve_socket

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erel_sync", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EREL_AMQP_URL": DEAD_BROKER},
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status"], 4, "erel-sync: broker amqp://guest:***@127.0.0.1:1/: no broker reachable"),
        (["wait", "--revision", "not-a-sha"], 2, "is not a git sha"),
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
