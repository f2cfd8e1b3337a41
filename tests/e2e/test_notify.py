"""`erel-sync notify` against a real HTTP endpoint started by the test: a Notification document
in the config repository sends a rejected revision and a failed host (a canary whose new
version fails its health check, which halts the rollout), each signed with HMAC-SHA256 over
the exact body. Restarted, the notifier sends none of them again; a revert's completed
rollout arrives after the restart, and every delivery id was received exactly once. Last, a
host whose agent is killed is announced unreachable, and one whose agent stopped cleanly (it
said it left) is not."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from erel_sync.dev.cluster import DevHost
from tests.e2e.harness import E2ECluster, running_cluster
from tests.e2e.test_gitops import release
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

KEY = "test-hook-key"
HOSTS = (DevHost("web-1", {"role": "web"}), DevHost("web-2", {"role": "web"}))
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["web-*"]
  releases:
    - {name: hello, version: "%s"}
  rollout: {max_unavailable: 1, canary: 1}
"""
NOTIFICATION = """apiVersion: erel/v1
kind: Notification
metadata: {name: ops}
spec:
  events: [revision_rejected, host_failed, rollout_halted, rollout_completed, host_unreachable]
  groups: [web]
  unreachable_after: 5s
  endpoint: {type: webhook, url: "http://127.0.0.1:%d/hook", secret_env: EREL_TEST_HOOK_KEY}
"""


class Hook(ThreadingHTTPServer):
    """Records every POST: (headers, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for h, b in self.received if h.get("X-Erel-Event") == kind]


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster(
    rabbit: Any, tmp_path_factory: pytest.TempPathFactory, hook: Hook
) -> Iterator[E2ECluster]:
    files = {
        "releases/hello.yaml": release("hello", ("0.1.0", "0.3.0")),
        "groups/web.yaml": GROUP % "0.1.0",
        "notifications/ops.yaml": NOTIFICATION % hook.server_address[1],
    }
    with running_cluster(
        rabbit, tmp_path_factory, "notify", HOSTS, files, reconcile_interval="2s"
    ) as c:
        yield c


def start_notify(c: E2ECluster, tmp: Path, n: int) -> subprocess.Popen[bytes]:
    with (tmp / f"notify-{n}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "erel_sync", "notify", "--repo", str(c.repo),
             "--state-dir", str(tmp / "notify"), "--amqp-url", c.url],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "EREL_TEST_HOOK_KEY": KEY},
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_rejections_and_failures_reach_a_real_endpoint_signed_and_once(
    cluster: E2ECluster, hook: Hook, tmp_path: Path
) -> None:
    c = cluster
    c.wait_converged([h.host_id for h in HOSTS], timeout=90)
    proc = start_notify(c, tmp_path, 1)
    try:
        log = tmp_path / "notify-1.log"
        wait_for("the notifier configured", lambda: "notifications ops" in log.read_text(), 30)
        bad = c.commit("web: no such version", {"groups/web.yaml": GROUP % "9.9.9"})
        (rejected,) = wait_for(
            "the rejection delivered", lambda: hook.events("revision_rejected"), 30
        )
        assert rejected["revision"] == bad and rejected["reason"] == "Invalid"
        c.commit("web: hello 0.3.0 (fails its health check)", {"groups/web.yaml": GROUP % "0.3.0"})
        failed = wait_for("the canary's failure delivered", lambda: hook.events("host_failed"), 120)
        assert {e["host"] for e in failed} == {"web-1"}  # the canary, first in host order
        wait_for("the halt delivered", lambda: hook.events("rollout_halted"), 60)
        with hook.lock:
            for headers, body in hook.received:  # each one signed over its exact body
                mac = hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
                assert headers["X-Erel-Signature"] == f"sha256={mac}"
    finally:
        stop(proc)

    before = len(hook.received)
    proc = start_notify(c, tmp_path, 2)  # reads the same streams again
    try:
        c.commit("web: back to hello 0.1.0", {"groups/web.yaml": GROUP % "0.1.0"})
        wait_for(
            "the revert's completed rollout delivered",
            lambda: any(e["seq"] == c.publisher_seq() for e in hook.events("rollout_completed")),
            120,
        )

        # web-1 stops cleanly (its presence says it left), then web-2's agent dies: only web-2
        # is unreachable. web-1 has been silent longer, so by the time web-2 is announced, a
        # wrong announcement of web-1 would have been sent too (both are checked together).
        # This notifier started a moment ago and may not have heard either host's heartbeat
        # yet: it knows them from notify.json and the presence stream (CI caught that case).
        def unreachable(host: str) -> list[dict[str, Any]]:
            return [e for e in hook.events("host_unreachable") if e["host"] == host]

        earlier = len(unreachable("web-1"))  # (a heartbeat late under load, before this)
        c.stop_process("web-1")
        c.kill_process("web-2")
        wait_for("web-2 announced unreachable", lambda: unreachable("web-2"), 60)
        assert len(unreachable("web-1")) == earlier, unreachable("web-1")
    finally:
        stop(proc)
    with hook.lock:
        ids = [h["X-Erel-Delivery"] for h, _ in hook.received]
    assert len(ids) == len(set(ids)), f"sent twice: {sorted(ids)}"
    # One failure, one notification, also when the host's heartbeats show the failed release
    # beside the rollout document's failed host (the ids are the same: tests/unit/test_notify).
    failures = [(e["host"], e["seq"]) for e in hook.events("host_failed")]
    assert len(failures) == len(set(failures)), failures
    assert len(ids) > before
