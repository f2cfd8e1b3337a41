"""The agent's own settings document (`kind: AgentSettings`), validated like config documents.

Pure: parses bytes. The agent loads its settings once at start (`adapters`/`agent` read the file
and the environment, then call `settings_from_document` / `load_agent_settings`) and passes them
down; nothing re-reads them later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from erel_sync.model import brokerurl
from erel_sync.model.names import listen_address, parse_duration, parse_size
from erel_sync.model.paths import (
    CONTROL_SOCKET_NAME,
    DEFAULT_CACHE_DIR,
    DEFAULT_RELEASES_DIR,
    DEFAULT_STATE_DIR,
)
from erel_sync.model.problems import ConfigError, Problem, json_path
from erel_sync.model.schema import check_document
from erel_sync.model.yamldocs import parse_documents

# What one release tarball may unpack to (`spec.artifacts`): checked member by member as the
# archive is read (`adapters.releases.archive`), so a gzip bomb is refused at its first big header.
DEFAULT_MAX_UNPACKED_BYTES = 8 * 1024**3
DEFAULT_MAX_ARCHIVE_MEMBERS = 200_000


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: str  # base64 raw Ed25519 public key


@dataclass(frozen=True)
class AgentSettings:
    host_id: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    broker_urls: tuple[str, ...] = (brokerurl.DEFAULT_URL,)
    vhost: str | None = None  # for URLs naming none; None: the URLs' own, else "/"
    broker_tls: brokerurl.TlsFiles | None = None  # for amqps:// URLs
    broker_heartbeat: float = 10.0
    # A config stream quiet this long (3 publisher republishes) is checked against the cluster.
    stream_silence: float = 180.0
    trusted_keys: tuple[TrustedKey, ...] = ()
    operator_keys: tuple[TrustedKey, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR
    releases_dir: str = DEFAULT_RELEASES_DIR
    cache_dir: str = DEFAULT_CACHE_DIR
    control_socket: str = ""  # "" = state_dir/CONTROL_SOCKET_NAME
    control_group: str | None = None
    reconcile_interval: float = 30.0
    heartbeat_interval: float = 5.0
    node_host: str = "localhost"
    cluster_host: str = ""  # clustered nodes' host part: what other hosts reach ("" = the FQDN)
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off

    def __post_init__(self) -> None:
        # Refused when made (file, environment and flags together), never later as an endless
        # "broker not reachable" in the agent's session loop.
        try:
            brokerurl.broker_urls(self.broker_urls, self.vhost, self.broker_tls)
        except brokerurl.BrokerUrlError as e:
            raise ConfigError(
                [Problem("AgentSettings", path="$.spec.broker", message=str(e))]
            ) from e
        if self.metrics_listen:
            try:
                listen_address(self.metrics_listen)
            except ValueError as e:
                raise ConfigError(
                    [Problem("AgentSettings", path="$.spec.metrics_listen", message=str(e))]
                ) from e

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The URLs the agent connects to: `broker_urls` under the vhost rule (model.brokerurl)."""
        return brokerurl.broker_urls(self.broker_urls, self.vhost, self.broker_tls)

    @property
    def control_socket_path(self) -> str:
        return self.control_socket or f"{self.state_dir.rstrip('/')}/{CONTROL_SOCKET_NAME}"

    def with_overrides(self, **changes: Any) -> AgentSettings:
        """Environment and command-line overrides on top of the file (None means not given)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _keys(raw: list[dict[str, str]]) -> tuple[TrustedKey, ...]:
    return tuple(TrustedKey(k["id"], k["public_key"]) for k in raw)


def settings_from_document(doc: Mapping[str, Any]) -> AgentSettings:
    spec = doc["spec"]
    broker = spec.get("broker", {})
    d = AgentSettings(host_id=spec["host_id"])
    changes: dict[str, Any] = {
        k: spec[k]
        for k in (
            "state_dir",
            "releases_dir",
            "cache_dir",
            "control_socket",
            "control_group",
            "node_host",
            "cluster_host",
            "metrics_listen",
        )
        if k in spec
    }
    for k in ("reconcile_interval", "heartbeat_interval"):
        if k in spec:
            changes[k] = parse_duration(spec[k])
    if "heartbeat" in broker:
        changes["broker_heartbeat"] = parse_duration(broker["heartbeat"])
    if "stream_silence" in broker:
        changes["stream_silence"] = parse_duration(broker["stream_silence"])
    if "tls" in broker:
        changes["broker_tls"] = brokerurl.TlsFiles(**broker["tls"])
    artifacts = spec.get("artifacts", {})
    if "max_unpacked_size" in artifacts:
        changes["max_unpacked_bytes"] = parse_size(artifacts["max_unpacked_size"])
    if "max_members" in artifacts:
        changes["max_archive_members"] = int(artifacts["max_members"])
    return replace(
        d,
        labels=MappingProxyType(dict(spec.get("labels", {}))),
        broker_urls=tuple(broker.get("urls", d.broker_urls)),
        vhost=broker.get("vhost", d.vhost),
        trusted_keys=_keys(spec.get("trusted_keys", [])),
        operator_keys=_keys(spec.get("operator_keys", [])),
        **changes,
    )


def load_agent_settings(file: str, data: bytes) -> AgentSettings:
    """Parse and validate an AgentSettings file; every problem located (raises ConfigError)."""
    docs, problems = parse_documents(file, data)
    if problems:
        raise ConfigError(problems)
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        raise ConfigError([Problem(file, message="expected one AgentSettings document")])
    doc = docs[0]
    if doc.data.get("kind") != "AgentSettings":
        line, col = doc.where(("kind",))
        raise ConfigError([Problem(file, line, col, "$.kind", "expected kind: AgentSettings")])
    issues = check_document("AgentSettings", doc.data)
    if issues:
        raise ConfigError(
            [Problem(file, *doc.where(p, key=k), json_path(p), m) for p, m, k in issues]
        )
    broker = doc.data["spec"].get("broker", {})
    tls = brokerurl.TlsFiles(**broker["tls"]) if "tls" in broker else None
    try:
        brokerurl.broker_urls(
            broker.get("urls", AgentSettings.broker_urls), broker.get("vhost"), tls
        )
    except brokerurl.BrokerUrlError as e:
        field = "tls" if e.reason.startswith("Tls") else "vhost" if "vhost" in broker else "urls"
        where = ("spec", "broker", field)
        raise ConfigError([Problem(file, *doc.where(where), json_path(where), str(e))]) from e
    return settings_from_document(doc.data)
