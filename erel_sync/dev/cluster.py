"""A local erel-sync cluster in one work directory: what `erel-sync dev` and the e2e tests run.

Application layer (beside `agent` and `publisher`): it orchestrates real processes — a private
RabbitMQ node (unless a broker URL is given), the publisher and N agents as separate
`python -m erel_sync` processes in their own sessions — on a work copy of `sample-repo/` whose
artifacts point at the example release tarballs built from `erlang/examples`. `stop()` ends
every process it started, by PID, and stops the releases the agents started.

The work repository gets a git identity of its own (`user.name`/`user.email` in its config), so
the README's `git commit` steps work on a machine without a global git identity; `hints()`
prints commands that run as printed, with or without an activated virtualenv.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from erel_sync.adapters import store
from erel_sync.adapters.git.configsource import read_directory
from erel_sync.adapters.releases import nodeproc
from erel_sync.core.snapshot import generate_key
from erel_sync.dev import clustered as cl
from erel_sync.dev import netns
from erel_sync.dev.examples import ExampleManifest, build_examples
from erel_sync.dev.netns import Network
from erel_sync.dev.probes import free_port
from erel_sync.dev.rabbitcluster import RabbitCluster
from erel_sync.dev.rabbitnode import RabbitNode

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_URL = re.compile(
    r"url: https://artifacts\.example\.com/([a-z0-9_-]+)/\1-([0-9A-Za-z.+_-]+)\.tar\.gz\n"
    r"(\s+)sha256: [0-9a-f]{64}"
)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "erel-sync dev",
    "GIT_AUTHOR_EMAIL": "dev@erel-sync.local",
    "GIT_COMMITTER_NAME": "erel-sync dev",
    "GIT_COMMITTER_EMAIL": "dev@erel-sync.local",
}


@dataclass(frozen=True)
class DevHost:
    host_id: str
    labels: dict[str, str]


DEFAULT_HOSTS = (
    DevHost("web-1", {"role": "web"}),
    DevHost("web-2", {"role": "web"}),
    DevHost("web-3", {"role": "web"}),
    DevHost("edge-1", {"role": "edge"}),
    DevHost("batch-1", {"role": "batch", "region": "us-east"}),
)


def point_at_artifacts(text: str, manifest: ExampleManifest) -> str:
    """Rewrite the sample's https artifact URLs to the built tarballs (URL + sha256 + size)."""

    def swap(m: re.Match[str]) -> str:
        art = manifest.get(m.group(1), m.group(2))
        indent = m.group(3)
        return f"url: {art.url()}\n{indent}sha256: {art.sha256}\n{indent}size: {art.size}"

    return SAMPLE_URL.sub(swap, text)


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.strip()


@dataclass
class DevCluster:
    work: Path
    hosts: tuple[DevHost, ...] = DEFAULT_HOSTS
    amqp_url: str | None = None
    reconcile_interval: str = "5s"
    heartbeat_interval: str = "1s"
    examples_dir: Path = field(default_factory=lambda: REPO_ROOT / "build" / "examples")
    rabbit: RabbitNode | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    key_id: str = "dev-publisher"
    operator_key_id: str = "dev-operator"
    # hello as one Erlang cluster on the web hosts, each in a network namespace of its own
    # (dev.clustered); needs root, and the cluster's own broker (reachable from there).
    clustered: bool = False
    network: Network | None = None
    brokers: int = 1  # dev's own broker: one node, or a RabbitMQ cluster of this many
    rabbits: RabbitCluster | None = None
    # More than one: `--ha` publishers taking turns (one active, the others standing by).
    publishers: int = 1
    # Seconds between the publisher's republishes (None: its default); the agents then check a
    # config stream quiet for three of them against the cluster (`broker.stream_silence`).
    republish: int | None = None
    # Each process serves Prometheus metrics on a port of its own (`metrics_url`).
    metrics: bool = False
    log_format: str = "text"  # of the publisher and agents (logs/*.log)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.work / "config"

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        """Every broker node's URL (one unless dev runs a cluster of them)."""
        if self.amqp_url:
            return [self.amqp_url]
        if self.rabbits is not None:
            return self.rabbits.urls
        assert self.rabbit is not None
        return [self.rabbit.url]

    @property
    def publisher_names(self) -> list[str]:
        """Each publisher's process name and state dir (under `work`)."""
        return ["publisher", *(f"publisher-{i}" for i in range(2, self.publishers + 1))]

    def host_dir(self, host_id: str) -> Path:
        return self.work / "hosts" / host_id

    # --- preparation
    def prepare(
        self, sample: Path = REPO_ROOT / "sample-repo", files: dict[str, str] | None = None
    ) -> None:
        """The work repo: a copy of `sample` (or exactly `files`) pointing at built tarballs."""
        self.work.mkdir(parents=True, exist_ok=True)
        manifest = build_examples(self.examples_dir)
        if not self.repo.exists():
            if files is None:
                shutil.copytree(sample, self.repo)
            else:
                for rel, text in files.items():
                    (self.repo / rel).parent.mkdir(parents=True, exist_ok=True)
                    (self.repo / rel).write_text(text)
            for f in sorted(self.repo.rglob("*.yaml")):
                f.write_text(point_at_artifacts(f.read_text(), manifest))
            result = read_directory(self.repo).validate()
            if not result.ok:
                raise RuntimeError("work repo invalid: " + "; ".join(map(str, result.problems)))
            git(self.repo, "init", "-q", "-b", "main")
            self._set_identity()
            git(self.repo, "add", "-A")
            git(self.repo, "commit", "-q", "-m", "sample cluster")
        self._set_identity()  # also in a work repo made by an older version
        if self.clustered:
            self._cluster_hello()
        keys = self.work / "keys"
        for key_id in (self.key_id, self.operator_key_id):
            if not (keys / f"{key_id}.key").exists():
                pem, pub = generate_key()
                store.write_atomic(keys / f"{key_id}.key", pem)
                store.write_atomic(keys / f"{key_id}.pub", pub.encode())

    def namespaced(self) -> list[DevHost]:
        """The hosts that run in network namespaces (the clustered ones)."""
        return [h for h in self.hosts if self.clustered and cl.web_host(h.host_id)]

    def netns_host(self, host: DevHost) -> netns.Host | None:
        """The namespace `host` runs in, None when it runs on the machine itself."""
        inside = self.namespaced()
        if self.network is None or host not in inside:
            return None
        return self.network.hosts[inside.index(host)]

    def _cluster_hello(self) -> None:
        """Group web's hello made clustered, in a commit of its own (also in a work repo made
        before the demo was clustered); the hosts' identities are made now, in their state
        dirs, so their recipients can be listed."""
        web = self.repo / "groups" / "web.yaml"
        if not web.exists() or cl.CLUSTERED_MARK in web.read_text():
            return
        hosts = {h.host_id: self.host_dir(h.host_id) / "state" for h in self.namespaced()}
        web.write_text(cl.clustered_web(web.read_text(), cl.recipients(hosts)))
        result = read_directory(self.repo).validate()
        if not result.ok:
            raise RuntimeError("work repo invalid: " + "; ".join(map(str, result.problems)))
        git(self.repo, "commit", "-q", "-am", "web: hello as one Erlang cluster")

    def _set_identity(self) -> None:
        """The demo's commits (README, `hints`) are made by hand in this repository: without
        an identity of its own, git refuses them where no global one is configured."""
        git(self.repo, "config", "user.name", GIT_ENV["GIT_AUTHOR_NAME"])
        git(self.repo, "config", "user.email", GIT_ENV["GIT_AUTHOR_EMAIL"])

    def hints(self) -> str:
        """What to try next, as shell commands that work when pasted."""
        # Every node: the CLI tries them in an order of its own (several URLs: space-separated).
        q, cli, url = shlex.quote, cli_command(), shlex.quote(" ".join(self.urls))
        repo = q(str(self.repo))
        return (
            f"config repo: {self.repo}\n"
            f'try:  cd {repo} && sed -i \'s/"0.2.0"/"0.1.0"/\' groups/web.yaml && '
            "git commit -qam 'web: back to hello 0.1.0'\n"
            f"then: EREL_AMQP_URL={url} {cli} wait -r $(git -C {repo} rev-parse HEAD)\n"
            f"      EREL_AMQP_URL={url} {cli} status\n"
            f"      EREL_AMQP_URL={url} {cli} stop hello --group web "
            f"--key {q(str(self.operator_key))}\n"
            f"logs: {self.work / 'logs'}   Ctrl-C stops everything."
        )

    def public_key(self, key_id: str | None = None) -> str:
        return (self.work / "keys" / f"{key_id or self.key_id}.pub").read_text().strip()

    @property
    def operator_key(self) -> Path:
        """The operator's signing key for remote commands (`erel-sync stop … --key`)."""
        return self.work / "keys" / f"{self.operator_key_id}.key"

    def agent_settings(self, host: DevHost) -> Path:
        d = self.host_dir(host.host_id)
        urls, extra = self.urls, ""
        if (ns := self.netns_host(host)) is not None and self.network is not None:
            urls = [u.replace("127.0.0.1", self.network.machine_ip) for u in urls]
            extra = f"  cluster_host: '{ns.cluster_ip}'\n"
        listed = ", ".join(f'"{u}"' for u in urls)
        silence = f", stream_silence: {3 * self.republish}s" if self.republish else ""
        labels = ", ".join(f"{k}: {v}" for k, v in host.labels.items())
        text = f"""apiVersion: erel/v1
kind: AgentSettings
metadata: {{name: {host.host_id}}}
spec:
  host_id: {host.host_id}
  labels: {{{labels}}}
  broker: {{urls: [{listed}], heartbeat: 5s{silence}}}
  trusted_keys: [{{id: {self.key_id}, public_key: "{self.public_key()}"}}]
  operator_keys:
    - {{id: {self.operator_key_id}, public_key: "{self.public_key(self.operator_key_id)}"}}
  state_dir: {d / "state"}
  releases_dir: {d / "releases"}
  cache_dir: {d / "cache"}
  control_socket: {d / "agent.sock"}
  reconcile_interval: {self.reconcile_interval}
  heartbeat_interval: {self.heartbeat_interval}
{extra}"""
        path = d / "agent.yaml"
        store.write_atomic(path, text.encode(), mode=0o644)
        return path

    # --- processes
    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def _spawn(self, name: str, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        args = [*args, "--log-format", self.log_format]
        if self.metrics and not prefix:  # (not inside a network namespace)
            port = self.metrics_ports.setdefault(name, free_port())
            args = [*args, "--metrics-listen", f"127.0.0.1:{port}"]
        log = (self.work / "logs" / f"{name}.log").open("ab")
        self.work.joinpath("logs").mkdir(exist_ok=True)
        self.procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "erel_sync", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches dev only; dev stops them
        )
        log.close()

    def start_network(self) -> None:
        if self.clustered and self.network is None:
            if self.amqp_url is not None:
                raise RuntimeError("a clustered dev cluster needs its own broker (no --amqp-url)")
            self.network = Network(len(self.namespaced()))
            try:
                self.network.up()
            except BaseException:
                self.network.down()
                self.network = None
                raise

    def start_broker(self) -> None:
        listen = (self.network.machine_ip,) if self.network is not None else ()
        if self.amqp_url is None and self.brokers > 1 and self.rabbits is None:
            self.rabbits = RabbitCluster(
                self.work / "rabbit-cluster", self.brokers, f"ereldev-{os.getpid()}", listen
            )
            self.rabbits.start()
        elif self.amqp_url is None and self.brokers == 1 and self.rabbit is None:
            self.rabbit = RabbitNode(
                self.work / "rabbit", name=f"ereldev-{os.getpid()}", listen=listen
            )
            self.rabbit.start()

    def start_publisher(self, name: str = "publisher") -> None:
        opts = ["--ha", "--heartbeat", "1"] if self.publishers > 1 else []
        if self.republish:
            opts += ["--republish", str(self.republish)]
        self._spawn(
            name,
            [
                "publisher", *opts,
                "--repo", str(self.repo),
                "--key", str(self.work / "keys" / f"{self.key_id}.key"),
                "--key-id", self.key_id,
                "--state-dir", str(self.work / name),
                *(arg for u in self.urls for arg in ("--amqp-url", u)),
                "--poll", "2",
                # The demo's operator may `rollout promote|retry` (hints, e2e).
                "--operator-key",
                f"{self.operator_key_id}={self.public_key(self.operator_key_id)}",
            ],
        )  # fmt: skip

    def start_agent(self, host: DevHost) -> None:
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        ns = self.netns_host(host)
        prefix = tuple(self.network.argv(ns, [])) if ns and self.network else ()
        self._spawn(host.host_id, ["agent", "--config", str(self.agent_settings(host))], prefix)

    def start(self) -> None:
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.start_network()
        self.start_broker()
        for name in self.publisher_names:
            self.start_publisher(name)
        for h in self.hosts:
            self.start_agent(h)

    def stop_process(self, name: str, timeout: float = 30.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def stop_releases(self) -> None:
        """The releases the agents started are daemons (not their children): stop them too."""
        for host in self.hosts:
            nodeproc.stop_nodes_under(self.host_dir(host.host_id) / "releases")

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        self.stop_releases()
        if self.rabbit is not None:
            self.rabbit.stop()
            self.rabbit = None
        if self.rabbits is not None:
            self.rabbits.stop()
            self.rabbits = None
        if self.network is not None:  # after the releases: it ends what still runs inside
            self.network.down()
            self.network = None

    def commit(self, message: str, edits: dict[str, str]) -> str:
        for rel, text in edits.items():
            (self.repo / rel).write_text(text)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")


def cli_command() -> str:
    """How a shell reaches this erel-sync: `erel-sync` when that is the one on PATH (an
    activated virtualenv, an installed package), else the script beside this interpreter by
    its full path (`.venv/bin/erel-sync` of `make demo`), else `python -m erel_sync`."""
    script = Path(sys.executable).parent / "erel-sync"
    found = shutil.which("erel-sync")
    if script.is_file():
        if found and Path(found).resolve() == script.resolve():
            return "erel-sync"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m erel_sync"
