"""Hosts of their own on one machine, for the demo and the tests that must show what crosses a
network: each a network namespace with its own addresses, its own loopback and so its own epmd
(one epmd per machine is why a clustered release's nodes, all named `<release>@...`, cannot
share one machine otherwise).

Two bridges on the machine: the *broker* network (the machine itself is `.1` on it, where a
test's private RabbitMQ node listens) and the *cluster* network (the Erlang nodes' own).
Each host has one veth pair on each, so a host's cluster link can be cut (`cut`) while it
still reaches the broker: its nodes then lose their peers while everyone's heartbeats, and so
the group's membership, go on. Needs root and iproute2: `require()` raises NetnsUnavailable
with the reason where they are missing (a test fails with it rather than passing unseen; the
demo runs its releases private instead).

`down()` ends what still runs inside the namespaces (an epmd the releases started outlives
them, and would keep a deleted namespace alive), by the PIDs `ip netns pids` lists.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    pass


def require() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("network namespaces need iproute2's `ip`")


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    try:
        require()
    except NetnsUnavailable as e:
        return str(e)
    return None


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    ns: str
    broker_ip: str  # its address on the broker network
    cluster_ip: str  # its address on the cluster network (its nodes' cluster_host)
    cluster_if: str  # its interface on the cluster network, inside the namespace


class Network:
    """`n` hosts; `up()` builds them, `down()` removes everything it made."""

    def __init__(self, n: int) -> None:
        self.tag = secrets.token_hex(2)
        net = 100 + int(self.tag, 16) % 100  # 10.<net>.1.0/24 broker, 10.<net>.2.0/24 cluster
        self.broker_bridge, self.cluster_bridge = f"eb{self.tag}", f"ec{self.tag}"
        self.machine_ip = f"10.{net}.1.1"
        self.hosts = [
            Host(
                f"erel-{self.tag}-{i}",
                f"10.{net}.1.{i + 2}",
                f"10.{net}.2.{i + 2}",
                f"c{self.tag}{i}b",
            )
            for i in range(n)
        ]
        self._made: list[tuple[str, str]] = []  # (kind, name) to remove, newest last

    def up(self) -> None:
        require()
        for bridge in (self.broker_bridge, self.cluster_bridge):
            ip("link", "add", bridge, "type", "bridge")
            self._made.append(("link", bridge))
            ip("link", "set", bridge, "up")
        ip("addr", "add", f"{self.machine_ip}/24", "dev", self.broker_bridge)
        for i, h in enumerate(self.hosts):
            self.add(i, h)

    def add(self, i: int, h: Host) -> None:
        ip("netns", "add", h.ns)
        self._made.append(("netns", h.ns))
        ip("link", "set", "lo", "up", ns=h.ns)
        for kind, bridge, addr, inner in (
            ("b", self.broker_bridge, h.broker_ip, f"b{self.tag}{i}b"),
            ("c", self.cluster_bridge, h.cluster_ip, h.cluster_if),
        ):
            outer = f"{kind}{self.tag}{i}a"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", outer, "master", bridge, "up")
            ip("link", "set", inner, "netns", h.ns)
            ip("addr", "add", f"{addr}/24", "dev", inner, ns=h.ns)
            ip("link", "set", inner, "up", ns=h.ns)

    def cut(self, h: Host) -> None:
        """The host loses its cluster network (its broker link stays)."""
        ip("link", "set", h.cluster_if, "down", ns=h.ns)

    def heal(self, h: Host) -> None:
        ip("link", "set", h.cluster_if, "up", ns=h.ns)

    def argv(self, h: Host, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", h.ns, *argv]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.ns == name)

    def pids(self, h: Host) -> list[int]:
        done = subprocess.run(
            ["ip", "netns", "pids", h.ns], capture_output=True, text=True, check=False, timeout=30
        )
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def down(self) -> None:
        for h in self.hosts:
            for pid in self.pids(h):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
        for kind, name in reversed(self._made):
            argv = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            subprocess.run(argv, capture_output=True, check=False, timeout=30)
        self._made.clear()
