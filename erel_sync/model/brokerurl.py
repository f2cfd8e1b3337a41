"""Broker URLs and the vhost setting: the one rule every connection of erel-sync follows.

Pure (urllib.parse only). Used by `model.settings` (AgentSettings `broker.urls` + `broker.vhost`),
by `cli.common` for the `--amqp-url`/`--vhost` options of the publisher, the agent and every
operator command, and by `adapters.broker.setup`: one place, so that the publisher, the agents,
the CLI and `broker setup` can never disagree on which vhost a configuration means.

The rule:
- a URL either names a vhost (its path: `amqp://h/erel`, `amqp://h/%2F` for `/`) or is bare
  (`amqp://h:5672`, `amqp://h:5672/`);
- the vhost setting (`vhost:` / `--vhost`) applies to bare URLs; without a setting, the vhost the
  URLs name is used, else `/`;
- a URL naming another vhost than the setting, or URLs of one list naming different vhosts, is a
  configuration error (exit 2): never silently one or the other.

The URLs handed to aio-pika always carry the vhost as their path, percent-encoded (`/` is
`%2F`), so what aiormq derives from them is exactly the vhost meant (tests check that).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

DEFAULT_VHOST = "/"
# The broker a fresh machine's defaults point at: RabbitMQ's own default user on localhost.
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
SCHEMES = ("amqp", "amqps")


class BrokerUrlError(ValueError):
    """A broker URL or vhost the user must fix. `reason` is a CamelCase constant; the message
    names the URL with its password masked."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# `user:password@` after an amqp(s) scheme, up to the last `@` of the word: a password with an
# unencoded `/` or `@` (a broken URL) is still masked whole.
_PASSWORD = re.compile(r"(amqps?://[^:/@\s]*):\S*@")


def mask(text: str) -> str:
    """`text` (a broker URL, or a message that contains some) with every password replaced by
    `***`, for messages and logs."""
    return _PASSWORD.sub(r"\1:***@", text)


def shown(url: str) -> str:
    """`url` as messages name it: password masked, without its query (TLS file paths)."""
    return mask(urlunsplit(urlsplit(url)._replace(query="")))


def url_vhost(url: str) -> str | None:
    """The vhost `url` names, or None for a bare URL (no path, or `/`)."""
    path = urlsplit(url).path
    if path in ("", "/"):
        return None
    return unquote(path[1:])


def vhost_path(vhost: str) -> str:
    """The URL path that names `vhost`: `/` + the name with every reserved character
    percent-encoded (`/` -> `/%2F`, `a/b` -> `/a%2Fb`)."""
    return "/" + quote(vhost, safe="")


def check_vhost(vhost: str) -> None:
    if not vhost:
        raise BrokerUrlError("EmptyVhost", "the vhost is empty (the default vhost is '/')")
    # aiormq turns a "%2F" left after decoding the path into "/": such a name cannot be reached.
    if "%2F" in vhost:
        raise BrokerUrlError("UnreachableVhost", f"vhost {vhost[:100]!r}: '%2F' in a vhost name")


def resolve_vhost(urls: Sequence[str], vhost: str | None) -> str:
    """The vhost `urls` mean under the rule (module docstring); raises BrokerUrlError."""
    if not urls:
        raise BrokerUrlError("NoBrokerUrl", "no broker URL given")
    named: dict[str, str] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise BrokerUrlError(
                "BadBrokerUrl", f"{mask(url)[:200]}: not an amqp:// or amqps:// URL with a host"
            )
        if (own := url_vhost(url)) is not None:
            named.setdefault(own, url)
    if vhost is not None:
        check_vhost(vhost)
        for own, url in named.items():
            if own != vhost:
                raise BrokerUrlError(
                    "VhostMismatch",
                    f"broker URL {mask(url)[:200]} names vhost {own!r} but the vhost setting "
                    f"is {vhost!r}: drop the path from the URL or make them agree",
                )
        return vhost
    if len(named) > 1:
        first, second = list(named.items())[:2]
        raise BrokerUrlError(
            "VhostMismatch",
            f"broker URLs name different vhosts: {mask(first[1])[:200]} ({first[0]!r}) and "
            f"{mask(second[1])[:200]} ({second[0]!r})",
        )
    resolved = next(iter(named), DEFAULT_VHOST)
    check_vhost(resolved)
    return resolved


def with_vhost(url: str, vhost: str) -> str:
    """`url` with its path set to `vhost` (query and credentials kept as given)."""
    return urlunsplit(urlsplit(url)._replace(path=vhost_path(vhost)))


@dataclass(frozen=True)
class TlsFiles:
    """TLS for `amqps://` URLs: the CA that signed the brokers' certificates (None: the
    system's), and this client's certificate and key (both or neither). The broker's hostname
    is always verified against its certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def problem(self) -> str | None:
        if (self.cert_file is None) != (self.key_file is None):
            return "a client certificate needs its key, and a key its certificate"
        return None


# aiormq reads these from an amqps URL's query: the one place TLS files reach the library.
_TLS_QUERY = {"ca_file": "cafile", "cert_file": "certfile", "key_file": "keyfile"}


def with_tls(url: str, tls: TlsFiles | None) -> str:
    """`url` carrying `tls`'s files (as aiormq's `cafile`/`certfile`/`keyfile` query);
    BrokerUrlError for TLS files with an `amqp://` URL, whose traffic would go in clear."""
    if tls is None or tls == TlsFiles():
        return url
    if problem := tls.problem():
        raise BrokerUrlError("TlsIncomplete", problem)
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        raise BrokerUrlError(
            "TlsWithoutAmqps",
            f"TLS files are given but {mask(url)} is not amqps:// (its traffic would be clear)",
        )
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _TLS_QUERY.values()]
    query += [(_TLS_QUERY[k], v) for k, v in vars(tls).items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def broker_urls(
    urls: Sequence[str], vhost: str | None, tls: TlsFiles | None = None
) -> tuple[str, ...]:
    """The URLs to connect to: each naming the vhost `resolve_vhost` decides, and carrying
    the TLS files (`with_tls`)."""
    resolved = resolve_vhost(urls, vhost)
    return tuple(with_tls(with_vhost(url, resolved), tls) for url in urls)


def spread(urls: Sequence[str], key: str) -> list[str]:
    """`urls` in the order client `key` (its host id, its name) tries them: a permutation of
    its own, the same at every start. Over many clients, each node is the first choice of an
    even share, and the clients of a node that goes away spread evenly over the others,
    instead of all of them landing on the next node of a shared list."""
    ranked = sorted(
        range(len(urls)),
        key=lambda i: hashlib.sha256(f"{key}\0{urls[i]}".encode()).digest(),
    )
    return [urls[i] for i in ranked]


class BrokerOrder:
    """Which node a client tries first, across its sessions: its own order (`spread`), and
    after losing a node, the one after it. A node that failed it is tried again only after the
    others, so a node that hangs (a connect that times out, not one refused at once) costs one
    timeout, not one per session."""

    def __init__(self, urls: Sequence[str], key: str) -> None:
        self.order = spread(urls, key)
        self._first = 0
        self.current: str | None = None

    def round(self) -> list[str]:
        """The URLs to try now, in order."""
        return self.order[self._first :] + self.order[: self._first]

    def connected(self, url: str) -> None:
        self.current = url

    def lost(self) -> None:
        """The session on `current` ended: start the next round after it."""
        if self.current in self.order:
            self._first = (self.order.index(self.current) + 1) % len(self.order)
        self.current = None
