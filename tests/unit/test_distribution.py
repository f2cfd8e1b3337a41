"""How a release's nodes are distributed (`DistributionSpec`): what `validate` accepts, what a
host of a group runs (the group's own, else the Release's), what the driver renders for a
clustered node (`-name`, no loopback, the port range) and how the agent calls it (erl_call
`-name`). A private release (the default) renders and digests exactly as before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from erel_sync.adapters import age
from erel_sync.core.desired import host_releases
from erel_sync.core.nodeconfig import node_in_vm_args, render_vm_args
from erel_sync.core.reconcile import config_digest
from erel_sync.core.rpccodec import erl_call_argv
from erel_sync.model import secrets
from erel_sync.model.canonical import canonical_body
from erel_sync.model.specs import DistributionMode, DistributionSpec
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

KEY = age.x25519.Identity.generate()
TO = [age.recipient_of(KEY)]
COOKIE = secrets.secret_node(age.encrypt(secrets.plain_json("c" * 32), TO), TO)


def validated(release_dist: Any = None, group_dist: Any = None):  # type: ignore[no-untyped-def]
    extra = f"  distribution: {json.dumps(release_dist)}\n" if release_dist is not None else ""
    group = group_yaml()
    if group_dist is not None:
        group += f"      distribution: {json.dumps(group_dist)}\n"
    files = {"r.yaml": release_yaml(extra=extra), "g.yaml": group}
    return validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])


def test_a_clustered_release_is_accepted_and_the_group_may_override_it() -> None:
    result = validated({"mode": "clustered", "cookie": COOKIE, "ports": {"min": 9100, "max": 9105}})
    state = result.require()
    dist = state.releases["hello"].distribution
    assert dist.clustered and dist.ports == (9100, 9105) and secrets.is_secret(dist.cookie)
    assert canonical_body(state).get("requires") == "0.3.0"
    (want,) = host_releases(state, state.groups["web"]).values()
    assert want.effective.distribution == dist
    private = validated({"mode": "clustered", "cookie": COOKIE}, {"mode": "private"}).require()
    (want,) = host_releases(private, private.groups["web"]).values()
    assert not want.distribution.clustered and not want.effective.distribution.clustered


@pytest.mark.parametrize(
    ("dist", "path", "message"),
    [
        ({"mode": "clustered"}, "$.spec.distribution", "needs `cookie`"),
        ({"mode": "clustered", "cookie": {"a": 1}}, "$.spec.distribution.cookie", "must be a secret"),
        ({"mode": "private", "cookie": COOKIE}, "$.spec.distribution.cookie", "only a clustered"),
        ({"ports": {"min": 9100, "max": 9105}}, "$.spec.distribution.ports", "only a clustered"),
        ({"mode": "clustered", "cookie": COOKIE, "ports": {"min": 9200, "max": 9100}},
         "$.spec.distribution.ports.min", "above max"),
    ],
)  # fmt: skip
def test_validate_refuses_what_cannot_run(dist: Any, path: str, message: str) -> None:
    result = validated(dist)
    assert not result.ok
    (problem,) = result.problems
    assert problem.file == "r.yaml" and problem.line == 11 and problem.path == path, problem
    assert message in problem.message


def test_a_clustered_node_renders_a_long_name_on_the_network() -> None:
    text = render_vm_args("hello@10.77.0.2", {}, loopback_only=False, ports=(9100, 9105))
    assert "-name hello@10.77.0.2" in text and "inet_dist_use_interface" not in text
    assert "-kernel inet_dist_listen_min 9100 inet_dist_listen_max 9105" in text
    assert node_in_vm_args(text) == "hello@10.77.0.2"
    private = render_vm_args("hello_h_1a2b@localhost", {})
    assert "-sname hello_h_1a2b@localhost" in private and "inet_dist_use_interface" in private
    assert node_in_vm_args(private) == "hello_h_1a2b@localhost"
    assert erl_call_argv("erl_call", "hello@10.77.0.2", ("m", "f", ()), timeout=3)[2] == "-name"
    assert erl_call_argv("erl_call", "h_x@localhost", ("m", "f", ()), timeout=3)[2] == "-sname"


def test_a_private_release_digests_as_before_and_a_distribution_change_is_a_change() -> None:
    state = validated().require()
    (want,) = host_releases(state, state.groups["web"]).values()
    assert config_digest(want.config, want.distribution) == config_digest(want.config)
    clustered = DistributionSpec(DistributionMode.CLUSTERED, COOKIE)
    assert config_digest(want.config, clustered) != config_digest(want.config)


def test_status_shows_a_clustered_releases_peers_and_partitioned() -> None:
    from erel_sync.core.clusterview import status_rows
    from erel_sync.core.conditions import release_error

    peers = {"expected": ["hello@b", "hello@c"], "connected": ["hello@b"], "missing": ["hello@c"]}
    row = {"name": "hello", "desired_version": "0.1.0", "version": "0.1.0", "state": "Ready",
           "running": True, "healthy": True, "hold": None, "reason": "", "last_error": "",
           "peers": peers}  # fmt: skip
    entry = {"host_id": "a", "group": "web", "reachable": True, "releases": [row],
             "last_seen": 0.0, "applied": None}  # fmt: skip
    (cells,) = status_rows([entry], now=0.0, wide=False)
    assert cells[2] == "hello (1/2 peers)"
    assert cells[-1] == "Partitioned: connected to 1 of 2 peers; not to hello@c"
    assert (
        release_error({**row, "peers": {**peers, "connected": peers["expected"], "missing": []}})
        == ""
    )
    (private,) = status_rows([{**entry, "releases": [{**row, "peers": None}]}], now=0.0, wide=False)
    assert private[2] == "hello" and private[-1] == ""


def test_validate_warns_about_a_group_recipient_the_cookie_leaves_out() -> None:
    other = age.recipient_of(age.x25519.Identity.generate())
    group = group_yaml(extra=f"  recipients: {{web-1: {TO[0]}, web-2: {other}}}\n")
    dist = json.dumps({"mode": "clustered", "cookie": COOKIE})
    files = {"r.yaml": release_yaml(extra=f"  distribution: {dist}\n"), "g.yaml": group}
    result = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])
    (warning,) = result.warnings
    assert warning.path == "$.spec.distribution.cookie" and "web-2" in warning.message
    group_own = group.replace('version: "0.1.0"', f'version: "0.1.0"\n      distribution: {dist}')
    files["g.yaml"] = group_own
    result = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])
    assert [w.path for w in result.warnings] == [
        "$.spec.releases[0].distribution.cookie",
    ]
