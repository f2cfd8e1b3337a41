"""How one release's node is named and rendered on this host: the node name, the config with
its secrets decrypted, and for a clustered release the shared cookie and port range.

Used by the release driver (`adapters.releases.driver`) for every render: first install,
another version, a config change. A private release (the default) is `-sname
<release>_<host>_<hash>@<node_host>`, loopback-only, with a random cookie of its own; a
clustered one is `-name <release>@<cluster_host>`, listening on the network (in its port
range), with the cookie its config gives as a secret (docs/clustering.md). The plain text of
secrets goes into the rendered files only (`files.render_version_config`).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from erel_sync.core import reasons
from erel_sync.model.secrets import SecretUnavailable, has_secrets, reveal
from erel_sync.model.specs import DistributionSpec, ReleaseConfig


@functools.cache
def fqdn() -> str:
    """This machine's FQDN, once: getfqdn() may ask the resolver."""
    return socket.getfqdn()


@dataclass(frozen=True)
class Rendering:
    node: str
    config: ReleaseConfig  # secrets decrypted
    loopback_only: bool
    ports: tuple[int, int] | None = None
    cookie: str | None = None  # plain, clustered only

    def kwargs(self) -> dict[str, Any]:
        return {"loopback_only": self.loopback_only, "ports": self.ports, "cookie": self.cookie}


def rendering(
    *,
    release: str,
    private_node: str,
    cluster_host: str,
    loopback_only: bool,
    config: ReleaseConfig,
    distribution: DistributionSpec,
    decrypt: Callable[[bytes], bytes] | None,
) -> Rendering:
    plain = revealed(config, decrypt)
    if not distribution.clustered:
        return Rendering(private_node, plain, loopback_only)
    if distribution.cookie is None:
        raise reasons.driver_error(reasons.InstallFailed, "a clustered release needs a cookie")
    try:
        cookie = reveal(distribution.cookie, decrypt, "$.distribution.cookie")
    except SecretUnavailable as e:
        raise reasons.driver_error(reasons.SecretUnavailable, str(e)) from None
    if not isinstance(cookie, str):
        raise reasons.driver_error(reasons.InstallFailed, "the cookie must be a string")
    return Rendering(f"{release}@{cluster_host}", plain, False, distribution.ports, cookie)


def revealed(config: ReleaseConfig, decrypt: Callable[[bytes], bytes] | None) -> ReleaseConfig:
    """`config` with its secrets decrypted (`model.secrets`), for rendering only: the plain text
    goes into the 0600 files the node reads and nowhere else."""
    if not has_secrets(config.sys_config):
        return config
    try:
        plain = reveal(config.sys_config, decrypt)
    except SecretUnavailable as e:
        raise reasons.driver_error(reasons.SecretUnavailable, str(e)) from None
    return ReleaseConfig(sys_config=plain, vm_args=config.vm_args)
