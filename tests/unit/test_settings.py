"""AgentSettings documents: defaults, overrides and located errors."""

from __future__ import annotations

import pytest

from erel_sync.model.problems import ConfigError
from erel_sync.model.settings import load_agent_settings

GOOD = b"""apiVersion: erel/v1
kind: AgentSettings
metadata: {name: web-1}
spec:
  host_id: web-1.example.com
  labels: {role: web}
  broker: {urls: ["amqp://agent:pw@127.0.0.1:5672/"], vhost: erel}
  reconcile_interval: 1m
  state_dir: /tmp/erel/state
"""


def test_loads_with_defaults_and_overrides() -> None:
    s = load_agent_settings("agent.yaml", GOOD)
    assert s.host_id == "web-1.example.com"
    assert dict(s.labels) == {"role": "web"}
    assert s.vhost == "erel" and s.reconcile_interval == 60.0
    assert s.heartbeat_interval == 5.0  # default
    assert s.with_overrides(host_id="web-2", vhost=None).host_id == "web-2"


@pytest.mark.parametrize(
    ("old", "new", "line", "path"),
    [
        (b"host_id: web-1.example.com", b"host_id: 'web/1'", 5, "$.spec.host_id"),
        (b"reconcile_interval: 1m", b"reconcile_interval: often", 8, "$.spec.reconcile_interval"),
        (b"  state_dir", b"  colour: red\n  state_dir", 9, "$.spec.colour"),
        (b'urls: ["amqp', b'urls: ["http', 7, "$.spec.broker.urls[0]"),
    ],
)
def test_errors_are_located(old: bytes, new: bytes, line: int, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_agent_settings("agent.yaml", GOOD.replace(old, new))
    p = err.value.problems[0]
    assert (p.file, p.line, p.path) == ("agent.yaml", line, path)
