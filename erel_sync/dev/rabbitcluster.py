"""A private RabbitMQ cluster on one machine: `size` private nodes (dev.rabbitnode: own node
names, ports and data dirs) sharing a cookie, joined into one cluster with `rabbitmqctl
join_cluster` as an operator would. For tests and `erel-sync dev --brokers 3`.

Each VM runs one scheduler (`+S 1:1`): the nodes share one machine's cores. The nodes boot in
parallel (each boot is seconds of mostly waiting), then every node but the first leaves its
app, joins the first one's cluster and starts again. A member stopped or killed
later comes back into the same cluster by `start()` (its data names the cluster). A whole
cluster that was stopped must be started together (`start()` again): RabbitMQ's nodes wait at
boot for the peer that stopped last.

Blocking calls (subprocess, sockets): from async code run them in a thread.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from erel_sync.dev.netns import Network
from erel_sync.dev.rabbitnetns import NetnsRabbitNode
from erel_sync.dev.rabbitnode import RabbitNode, RabbitNodeError


class RabbitCluster:
    """`network`: each node in a namespace of its own (its hosts, in order; dev.rabbitnetns),
    so that one can be cut off from the others; `erl_args` go to every node."""

    def __init__(
        self,
        work_dir: Path,
        size: int = 3,
        name: str | None = None,
        listen: tuple[str, ...] = (),
        *,
        network: Network | None = None,
        erl_args: str = "",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        base = name or f"erelsync-{secrets.token_hex(3)}"
        cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))
        self.name = f"{base}-cluster"
        # Three VMs on one machine share its cores: one scheduler each, or their schedulers
        # contend (measured: p99 of a commit to 100 agents ~1.9 s -> ~0.5 s).
        args = f"+S 1:1 {erl_args}".strip()
        self.nodes: list[RabbitNode] = []
        for i in range(size):
            where, short = Path(work_dir) / f"node{i + 1}", f"{base}-{i + 1}"
            if network is not None:
                self.nodes.append(
                    NetnsRabbitNode(where, network, network.hosts[i], short, cookie=cookie,
                                    cluster_name=self.name, erl_args=args)
                )  # fmt: skip
            else:
                self.nodes.append(
                    RabbitNode(where, short, listen=listen, cookie=cookie,
                               cluster_name=self.name, erl_args=args)
                )  # fmt: skip
        self._joined = False

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 120) -> None:
        """Boot every node that is not running (in parallel); on the first start, join them
        into one cluster. Returns once every node runs the cluster's app."""
        self._each([n for n in self.nodes if not n.running], lambda n: n.start(timeout))
        if not self._joined:
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node_name)
                node.ctl("start_app")
            self._joined = True
        self.nodes[0].ctl(
            "await_online_nodes", str(len(self.nodes)), "--timeout", str(int(timeout))
        )

    def stop(self) -> None:
        """Stop every node (in parallel: a member stopped alone would wait for the others)."""
        self._each([n for n in self.nodes if n.running], lambda n: n.stop())

    def kill(self) -> None:
        self._each([n for n in self.nodes if n.running], lambda n: n.kill())

    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.running]

    @staticmethod
    def _each(nodes: list[RabbitNode], do: Callable[[RabbitNode], object]) -> None:
        """Run `do(node)` for each node in a thread of its own; raise the first error."""
        errors: list[BaseException] = []

        def run(node: RabbitNode) -> None:
            try:
                do(node)
            except BaseException as e:  # reported to the caller below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            if isinstance(errors[0], RabbitNodeError):
                raise errors[0]
            raise RabbitNodeError(repr(errors[0])) from errors[0]

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
