"""An e2e cluster for tests: DevCluster (real publisher and agent processes) on a test vhost,
plus a status watcher that follows `erel.status` in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from erel_sync.adapters import store
from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.dev.cluster import DevCluster, DevHost
from tests.cli import erel_sync
from tests.waiting import wait_for

T = TypeVar("T")


class StatusWatcher(threading.Thread):
    """Heartbeats by host and every publisher event, as the CLI would see them."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.beats: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._halt = asyncio.get_running_loop(), asyncio.Event()
        connection = await broker.connect([self.url], name="e2e-watch", attempts=50)
        try:
            channel = await connection.channel()

            async def on_status(key: str, body: bytes) -> None:
                doc = json.loads(body)
                if key.startswith("host."):
                    self.beats[doc["host_id"]] = doc
                else:
                    self.events.append(doc)

            while True:
                try:
                    await broker.consume_status(channel, on_status)
                    break
                except Exception:  # exchange not declared yet by the publisher
                    channel = await connection.channel()
                    await asyncio.sleep(0.1)  # poll until the topology exists
            self.ready.set()
            await self._halt.wait()
        finally:
            await connection.close()

    def stop(self) -> None:
        if self._loop is not None and self._halt is not None:
            self._loop.call_soon_threadsafe(self._halt.set)
        self.join(10)


class E2ECluster(DevCluster):
    watcher: StatusWatcher | None = None

    def report(self, host_id: str) -> dict[str, Any]:
        doc = store.read_json(self.host_dir(host_id) / "state" / "status.json") or {}
        return dict(doc.get("report") or {})

    def releases(self, host_id: str) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.report(host_id).get("releases", [])}

    def published(self, name: str = "publisher") -> dict[str, Any]:
        """What publisher `name` last took (its publisher.json): seq, revision, rejected."""
        return store.read_json(self.work / name / "publisher.json") or {}

    def active_publisher(self) -> str:
        """Of several publishers, the one that signed the highest seq: the last to be active."""
        return max(self.publisher_names, key=lambda n: int(self.published(n).get("seq", 0)))

    def publisher_seq(self) -> int:
        return int(self.published(self.active_publisher()).get("seq", 0))

    def converged(self, host_id: str, seq: int | None = None) -> bool:
        rep = self.report(host_id)
        seq = self.publisher_seq() if seq is None else seq
        return bool(rep.get("converged")) and (rep.get("applied") or {}).get("seq") == seq

    def wait_converged(self, hosts: list[str], seq: int | None = None, timeout: float = 60) -> None:
        try:
            wait_for(
                f"{hosts} converged at seq {seq or self.publisher_seq()}",
                lambda: all(self.converged(h, seq) for h in hosts),
                timeout,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.whereabouts(hosts)}") from None

    def whereabouts(self, hosts: list[str]) -> str:
        """Where each host stands and its log's last lines: what a timed-out wait leaves to
        read in CI's output."""
        lines = []
        for h in hosts:
            doc = store.read_json(self.host_dir(h) / "state" / "status.json") or {}
            rep = doc.get("report") or {}
            held = {p: (rep.get(p) or {}).get("seq") for p in ("snapshot", "applied")}
            lines.append(f"{h}: {held} converged={rep.get('converged')} {doc.get('counters')}")
            log = self.work / "logs" / f"{h}.log"
            with contextlib.suppress(OSError):
                lines += [f"  | {t}" for t in log.read_text(errors="replace").splitlines()[-8:]]
        return "\n".join(lines)

    def driver(self, host_id: str) -> ReleaseDriver:
        d = self.host_dir(host_id)
        return ReleaseDriver(
            DriverSettings(releases_dir=d / "releases", cache_dir=d / "cache", host_id=host_id)
        )

    def observe(self, host_id: str) -> dict[str, Any]:
        return asyncio.run(self.driver(host_id).observe_all())

    def add_host(self, host_id: str, **labels: str) -> DevHost:
        host = DevHost(host_id, labels)
        self.hosts = (*self.hosts, host)
        self.start_agent(host)
        return host

    def vm_pid(self, host_id: str, name: str) -> int:
        """The Erlang VM of a release (the process started with `-root <release root>`)."""
        root = self.host_dir(host_id) / "releases" / name
        for pid in nodeproc.node_pids(root):
            argv = nodeproc.cmdline(pid) or []
            if "-root" in argv:
                return pid
        return 0

    def commit(self, message: str, edits: dict[str, str]) -> str:
        """Commit, then wait until the publisher has taken the commit (published or rejected),
        so that a following wait_converged() waits for the right seq."""
        sha = super().commit(message, edits)
        if any(name in self.procs for name in self.publisher_names):

            def taken() -> bool:
                return any(
                    sha in (doc.get("revision"), doc.get("rejected"))
                    for doc in map(self.published, self.publisher_names)
                )

            wait_for(f"a publisher to take {sha[:12]}", taken, timeout=30)
        return sha

    def file(self, rel: str) -> Path:
        return self.repo / rel


@contextlib.contextmanager
def running_cluster(
    rabbit: Any,
    tmp_path_factory: Any,
    name: str,
    hosts: tuple[DevHost, ...],
    files: dict[str, str],
    *,
    reconcile_interval: str,
    watch: bool = False,
    metrics: bool = False,
) -> Iterator[E2ECluster]:
    """A cluster of agent processes and a publisher on a fresh vhost of the test broker, with
    `files` as the first commit; with `watch`, a StatusWatcher follows its heartbeats. Stopped
    on exit, processes and releases first: nothing may outlive a failed run."""
    from tests.rabbit import unique_name

    vhost = unique_name(name)
    rabbit.add_vhost(vhost)
    c = E2ECluster(
        tmp_path_factory.mktemp(name),
        hosts=hosts,
        amqp_url=rabbit.url_for(vhost),
        reconcile_interval=reconcile_interval,
        heartbeat_interval="500ms",
        metrics=metrics,
    )
    try:
        c.prepare(files=files)
        c.start()
        if watch:
            c.watcher = StatusWatcher(c.url)
            c.watcher.start()
        yield c
    finally:
        try:
            c.stop()
        finally:
            if c.watcher is not None:
                c.watcher.stop()
            rabbit.delete_vhost(vhost)


def cli(c: E2ECluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`erel-sync ARGS` as an operator of `c` runs it (its broker URL, its operator key)."""
    env = {"EREL_AMQP_URL": c.url, "EREL_OPERATOR_KEY": str(c.operator_key)}
    return erel_sync(*args, env=env, timeout=timeout)


def reset_cluster(
    c: E2ECluster, files: dict[str, str], hosts: tuple[DevHost, ...], timeout: float = 120
) -> None:
    """Bring a module's cluster back to its starting point, so each test can run alone or in any
    order: the publisher and every agent of `hosts` running (agents a test added are stopped,
    with their releases), the config repository holding exactly `files` (one commit when it
    differs), no holds, and every host converged on the publisher's newest seq."""
    from erel_sync.dev.cluster import point_at_artifacts
    from erel_sync.dev.examples import build_examples

    manifest = build_examples(c.examples_dir)  # cached: only reads the manifest
    files = {rel: point_at_artifacts(text, manifest) for rel, text in files.items()}
    if c.procs.get("publisher") is None or c.procs["publisher"].poll() is not None:
        c.procs.pop("publisher", None)
        c.start_publisher()
    wanted = {h.host_id for h in hosts}
    for host in c.hosts:
        if host.host_id not in wanted:
            c.stop_process(host.host_id)
            nodeproc.stop_nodes_under(c.host_dir(host.host_id) / "releases")
    for name in [n for n in c.procs if n != "publisher" and n not in wanted]:
        c.stop_process(name)
    c.hosts = hosts
    for host in hosts:
        proc = c.procs.get(host.host_id)
        if proc is None or proc.poll() is not None:
            c.procs.pop(host.host_id, None)
            c.start_agent(host)

    extra = [
        p
        for p in c.repo.rglob("*.yaml")
        if ".git" not in p.parts and p.relative_to(c.repo).as_posix() not in files
    ]
    changed = {rel: text for rel, text in files.items() if not _holds(c.file(rel), text)}
    if extra or changed:
        for p in extra:
            p.unlink()
        c.commit("test: back to the module's starting point", changed)

    for host in hosts:
        sock = c.host_dir(host.host_id) / "agent.sock"
        held = [n for n, r in c.releases(host.host_id).items() if r.get("hold")]
        for name in held:
            cli(c, "start", name, "--socket", str(sock))
    c.wait_converged([h.host_id for h in hosts], timeout=timeout)

    # An agent started above reports converged from its stored snapshot before its broker
    # session is up: wait until every host answers `status` too, as a test's CLI would see it.
    def all_answer() -> bool:
        out = cli(c, "status", "-o", "json", "--timeout", "2", timeout=60)
        doc = json.loads(out.stdout or "[]")
        answered = {h["host_id"] for h in doc if h.get("reachable")}
        return out.returncode == 0 and answered >= {h.host_id for h in hosts}

    wait_for("every host answers status", all_answer, timeout=timeout, every=0.2)


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:
        return False
