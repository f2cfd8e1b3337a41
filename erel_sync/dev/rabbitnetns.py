"""A private RabbitMQ node inside a network namespace of its own (dev.netns), for tests that cut
brokers off from each other: its distribution runs on the namespace's cluster address under a
long name (`<name>@<cluster address>`, its own epmd), its AMQP listener on the namespace's
broker address, where clients on the machine reach it. Cutting the host's cluster link
(`Network.cut`) partitions it from the other nodes while its clients still reach it.

Every command runs inside the namespace (`ip netns exec`): the server and `rabbitmqctl`.
"""

from __future__ import annotations

from pathlib import Path

from erel_sync.adapters.broker import rabbitctl
from erel_sync.dev.netns import Host, Network
from erel_sync.dev.rabbitnode import RabbitNode, RabbitNodeError


class NetnsRabbitNode(RabbitNode):
    def __init__(
        self,
        work_dir: Path,
        network: Network,
        host: Host,
        name: str,
        *,
        cookie: str,
        cluster_name: str,
        erl_args: str = "",
    ) -> None:
        super().__init__(
            work_dir,
            name,
            listen=(host.broker_ip,),
            cookie=cookie,
            cluster_name=cluster_name,
            erl_args=erl_args,
        )
        self.network, self.where = network, host
        self.node_name = f"{self.short_name}@{host.cluster_ip}"
        self.log_file = self.work_dir / "log" / f"{self.node_name}.log"
        self.host = host.broker_ip

    def command(self, *argv: str) -> list[str]:
        return self.network.argv(self.where, list(argv))

    def env(self) -> dict[str, str]:
        env = super().env()
        env["RABBITMQ_USE_LONGNAME"] = "true"
        # Distribution on the namespace's addresses (not loopback only): peers reach it there.
        env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = self.erl_args
        return env

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        return rabbitctl.run(
            *self.command(str(self.bin_dir / "rabbitmqctl"), "-n", self.node_name, *args),
            env=self.env(),
            stdin=stdin,
            timeout=timeout,
            error=RabbitNodeError,
        )

    def _erl_call(self) -> str | None:
        return None  # it would run outside the namespace: readiness through rabbitmqctl
