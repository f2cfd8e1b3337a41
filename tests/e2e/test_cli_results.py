"""Honest results from `status` and `wait` (issue 10), end to end: a real publisher, real agents,
the `erel-sync` CLI as a subprocess, a private RabbitMQ node and the real example releases.

- a failing release shows its last error in the `status` table (not only `-o wide`), and
  `status` exits 1 (0 when every host converged);
- `wait` on a revision the publisher rejected ends at once with exit 1 and the publisher's
  problems, also when started later while the publisher is down (`erel.revisions` stream);
- `wait` on a sha that only a later snapshot carries converges with it;
- `wait` counts a host that the awaited revision newly assigns to a group.

One cluster for the module, brought back to its starting point before each test
(`reset_cluster`), so the tests run alone or in any order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from erel_sync.adapters import store
from erel_sync.dev.cluster import REPO_ROOT, DevHost
from tests.e2e.harness import E2ECluster, cli, reset_cluster, running_cluster, wait_for
from tests.e2e.test_gitops import group, release

pytestmark = pytest.mark.e2e

# ticker's long probation makes a fresh install on a host take seconds: long enough for a
# `wait` that skipped the host to have declared convergence before it.
FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0", "0.2.0")),
    "releases/ticker.yaml": release("ticker", ("0.1.0",)).replace(
        "probation: 300ms", "probation: 4s"
    ),
    "groups/web.yaml": group("web", "hosts: ['web-*']", {"hello": "0.1.0"}),
}
HOSTS = (DevHost("web-1", {"role": "web"}),)
BROKEN = """apiVersion: erel/v1
kind: Release
metadata: {name: broken}
spec:
  versions:
    - version: "0.1.0"
      artifact:
        url: file:///nonexistent/erel-sync-tests/broken-0.1.0.tar.gz
        sha256: deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef
"""


@pytest.fixture(scope="module")
def cluster(rabbit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        rabbit, tmp_path_factory, "results", HOSTS, FILES, reconcile_interval="1s"
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def baseline(cluster: E2ECluster) -> None:
    reset_cluster(cluster, FILES, HOSTS)


def publisher_state(c: E2ECluster) -> dict[str, Any]:
    return dict(store.read_json(c.work / "publisher" / "publisher.json") or {})


def test_a_failing_release_shows_its_error_in_the_table_and_status_exits_1(
    cluster: E2ECluster,
) -> None:
    ok = cli(cluster, "status")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0].split()[-1] == "ERROR"
    nobody = cli(cluster, "status", "--host", "nobody-1", "--timeout", "0.5")
    assert nobody.returncode == 3 and "nobody-1" in nobody.stderr, nobody.stderr

    web = FILES["groups/web.yaml"].replace(
        "{name: hello", '{name: broken, version: "0.1.0"}, {name: hello'
    )
    cluster.commit(
        "web: a release whose artifact is missing",
        {"releases/broken.yaml": BROKEN, "groups/web.yaml": web},
    )
    wait_for(
        "broken failing on web-1 with a recorded error",
        lambda: cluster.releases("web-1").get("broken", {}).get("last_error"),
        timeout=60,
    )
    out = cli(cluster, "status")
    assert out.returncode == 1, out.stdout + out.stderr
    header, *rows = out.stdout.splitlines()
    error_at = header.index("ERROR")
    row = next(r for r in rows if r.split()[:3] == ["web-1", "web", "broken"])
    assert "Backoff" in row.split() or "Failed" in row.split(), row
    assert row[error_at:].startswith("ArtifactUnavailable: "), row  # reason, then the message
    assert "web-1" in out.stderr and "broken" in out.stderr

    doc = cli(cluster, "status", "-o", "json")
    assert doc.returncode == 1
    schema = json.loads((REPO_ROOT / "schemas" / "cli" / "status.schema.json").read_text())
    hosts = json.loads(doc.stdout)
    jsonschema.validate(hosts, schema)
    broken = next(r for r in hosts[0]["releases"] if r["name"] == "broken")
    assert broken["reason"] == "ArtifactUnavailable" and broken["last_error"]


def test_wait_on_a_rejected_revision_ends_at_once_with_the_problems(cluster: E2ECluster) -> None:
    bad = FILES["groups/web.yaml"].replace('version: "0.1.0"', 'version: "9.9"')
    sha = cluster.commit("web: a version hello does not have", {"groups/web.yaml": bad})
    assert publisher_state(cluster)["rejected"] == sha

    started = time.monotonic()
    out = cli(cluster, "wait", "--revision", sha[:10], "--timeout", "90s")
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 20
    assert "rejected" in out.stdout and sha[:10] in out.stdout
    assert "groups/web.yaml:" in out.stdout and "9.9" in out.stdout

    # A wait started later, with the publisher down: the rejection is still on record.
    cluster.stop_process("publisher")
    try:
        started = time.monotonic()
        out = cli(cluster, "wait", "--revision", sha, "--group", "web", "--timeout", "90s")
        assert out.returncode == 1, out.stdout + out.stderr
        assert time.monotonic() - started < 20
        assert "groups/web.yaml:" in out.stdout
    finally:
        cluster.start_publisher()


def test_wait_on_a_sha_that_a_later_snapshot_carries(cluster: E2ECluster) -> None:
    cluster.stop_process("publisher")
    try:
        first = cluster.commit(
            "web: hello 0.2.0",
            {"groups/web.yaml": FILES["groups/web.yaml"].replace("0.1.0", "0.2.0")},
        )
        second = cluster.commit("a comment", {"notes.txt": "not config\n"})
    finally:
        cluster.start_publisher()
    wait_for(
        "the publisher to take the second commit",
        lambda: publisher_state(cluster).get("revision") == second,
        timeout=30,
    )
    out = cli(cluster, "wait", "--revision", first[:7], "--timeout", "60s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "converged" in out.stdout
    assert cluster.observe("web-1")["hello"].current == "0.2.0"


def test_wait_counts_a_host_that_the_revision_newly_assigns(cluster: E2ECluster) -> None:
    cluster.add_host("spare-1", role="spare")
    seq = cluster.publisher_seq()
    wait_for(
        "spare-1 holding the current snapshot, in no group",
        lambda: (
            (cluster.report("spare-1").get("snapshot") or {}).get("seq") == seq
            and cluster.report("spare-1").get("match") == "Unassigned"
        ),
        timeout=60,
    )
    spare = group("spare", "selector: {labels: {role: spare}}", {"ticker": "0.1.0"})
    sha = cluster.commit("spare hosts run ticker", {"groups/spare.yaml": spare})
    out = cli(cluster, "wait", "--revision", sha, "--timeout", "90s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 host(s)" in out.stdout
    # Converged means converged: spare-1 reported it (its status.json follows the report it
    # answered `wait` with within a heartbeat spacing, 1 s).
    wait_for("spare-1's own report converged", lambda: cluster.converged("spare-1", seq + 1), 10)
