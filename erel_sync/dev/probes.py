"""Probes of local ports and processes for the dev tooling: a free port, an open port, the
names epmd knows, the AMQP listener's greeting, children and liveness of a process.

Used by `dev.rabbitnode` (to start and sweep a private RabbitMQ node and to prove it is ours)
and by the tests of that node. Plain sockets and /proc: no broker library, no subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

LOCAL_HOST = "127.0.0.1"
EPMD_PORT = 4369


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel's pick, so it is unlikely to collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL_HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOCAL_HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def epmd_names(port: int = EPMD_PORT) -> dict[str, int] | None:
    """Names registered with the local epmd (NAMES_REQ), or None when no epmd answers."""
    try:
        with socket.create_connection((LOCAL_HOST, port), timeout=1.0) as s:
            s.sendall(b"\x00\x01n")
            chunks = []
            while chunk := s.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    data = b"".join(chunks)[4:].decode("utf-8", errors="replace")
    names: dict[str, int] = {}
    for line in data.splitlines():
        # `name <name> at port <port>`
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name" and parts[4].isdigit():
            names[parts[1]] = int(parts[4])
    return names


def amqp_server_properties(port: int, host: str = LOCAL_HOST, timeout: float = 1.0) -> bytes:
    """The raw `connection.start` payload the AMQP listener sends, or b"" if there is none.

    Only the protocol header is sent, never credentials; the server then closes the socket.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            buf = b""
            while len(buf) < 7:
                chunk = s.recv(4096)
                if not chunk:
                    return b""
                buf += chunk
            if buf[0] != 1:  # not a method frame: not AMQP 0-9-1
                return b""
            size = int.from_bytes(buf[3:7], "big")
            while len(buf) < 7 + size + 1:
                chunk = s.recv(65536)
                if not chunk:
                    return b""
                buf += chunk
            return buf[7 : 7 + size]
    except OSError:
        return b""


def ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # `pid (comm) S ppid ...`: comm may hold spaces or parentheses, so split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0]


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                info = ppid_and_state(int(entry.name))
                if info and info[0] == pid:
                    found.append(int(entry.name))
        return found


def alive(pid: int) -> bool:
    info = ppid_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
