"""The publisher's settings and counters: read once by `erel-sync publisher` (`cli.daemons`),
`erel-sync dev` and the tests, passed to `publisher.daemon.Publisher` (which re-exports them)
and never re-read. Apart from the daemon so that it stays about heads and snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from erel_sync.model.settings import TrustedKey


@dataclass(frozen=True)
class PublisherSettings:
    repo: Path
    key_file: Path
    key_id: str
    state_dir: Path
    amqp_urls: tuple[str, ...]
    branch: str = "main"
    republish_interval: float = 60.0
    poll_interval: float = 5.0
    debounce: float = 0.002
    broker_user: str | None = None  # sets AMQP user_id, which the broker validates
    broker_heartbeat: float = 10.0  # AMQP heartbeat: a silent broker is declared dead in ~3x
    operator_keys: tuple[TrustedKey, ...] = ()  # may `rollout promote|retry` (publisher.rollout)
    # After a session starts, the rollout controller listens this long before it decides
    # again: at least one heartbeat interval of the agents, or live hosts would look gone.
    rollout_warmup: float = 8.0
    # Take turns with other publishers through the broker's lock (publisher.lease): sign
    # nothing until active, then only seqs of the epoch claimed.
    ha: bool = False
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off


@dataclass
class Counters:
    signed: int = 0  # revisions taken as valid (a new seq each)
    published: int = 0  # snapshot publishes, republishes included
    rejected: int = 0
    publish_failures: int = 0
    answered_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)
