"""The release driver's settings (`adapters.releases.driver.ReleaseDriver`), from the agent's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from erel_sync.model.names import HOST_ID_RE
from erel_sync.model.settings import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES


@dataclass(frozen=True)
class DriverSettings:
    releases_dir: Path
    cache_dir: Path
    host_id: str
    node_host: str = "localhost"
    rpc_timeout: float = 10.0  # one ordinary RPC
    status_timeout: float = 3.0  # the observe probe
    long_timeout: float = 120.0  # unpack / install / rollback
    loopback_only: bool = True  # nodes' distribution listens on 127.0.0.1 only
    max_artifact_bytes: int = 2 * 1024**3
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES  # AgentSettings spec.artifacts
    max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS
    erl_call: str | None = None
    epmd: str | None = None
    cluster_host: str = ""  # a clustered node's host: what other hosts reach ("" = the FQDN)
    decrypt: Callable[[bytes], bytes] | None = None  # the host's age identity: secrets

    def __post_init__(self) -> None:
        if not HOST_ID_RE.match(self.host_id):
            raise ValueError(f"bad host id {self.host_id!r}")
        for path in (self.releases_dir, self.cache_dir):
            if "'" in str(path) or "\n" in str(path):
                raise ValueError(f"unsupported character in {path}")  # reaches a shell line
