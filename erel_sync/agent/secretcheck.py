"""Which desired releases hold a secret this host cannot decrypt (`SecretUnavailable`).

Called by `agent.reconciler` once per tick, before planning: such a release is left as it is
(`core.reconcile.plan`'s `locked`), and its status names the secret's path, never its content.
Decrypting is tried once per config (by digest), not every tick. The decryption that feeds the
rendered files happens in the driver (`adapters.releases.driver`), with the same identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from erel_sync.core.desired import HostReleaseSpec
from erel_sync.core.reconcile import config_digest
from erel_sync.model.secrets import SecretUnavailable, has_secrets, reveal

log = logging.getLogger("erel_sync.agent")

MEMORY = 256  # configs whose secrets were tried, remembered by digest


class SecretCheck:
    def __init__(self, host_id: str, decrypt: Callable[[bytes], bytes] | None) -> None:
        self.host_id = host_id
        self.decrypt = decrypt
        self._tried: dict[str, str] = {}  # config digest -> "" (readable) or where it is not

    def locked(self, desired: Mapping[str, HostReleaseSpec] | None) -> dict[str, str]:
        """Desired releases with a secret this host cannot decrypt: name -> where."""
        out: dict[str, str] = {}
        for name, want in (desired or {}).items():
            cookie = want.distribution.cookie
            if not has_secrets(want.config.sys_config) and cookie is None:
                continue
            key = config_digest(want.config, want.distribution)
            if key not in self._tried:
                if len(self._tried) > MEMORY:
                    self._tried.clear()
                try:
                    reveal(want.config.sys_config, self.decrypt)
                    if cookie is not None:
                        reveal(cookie, self.decrypt, "$.distribution.cookie")
                    self._tried[key] = ""
                except SecretUnavailable as e:
                    self._tried[key] = str(e)
                    log.warning("%s: %s: SecretUnavailable: %s", self.host_id, name, e)
            if self._tried[key]:
                out[name] = self._tried[key]
        return out
