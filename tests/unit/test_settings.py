"""AgentSettings documents: defaults, overrides and located errors; the broker URL + vhost rule;
the archive limits (`spec.artifacts`) and the sizes they are written in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiormq
import pytest

from erel_sync.adapters.releases.driver import ReleaseDriver
from erel_sync.agent.counting import CountingDriver
from erel_sync.agent.daemon import Agent
from erel_sync.model import brokerurl
from erel_sync.model.names import format_size, parse_size
from erel_sync.model.problems import ConfigError
from erel_sync.model.settings import AgentSettings, load_agent_settings

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
    assert s.stream_silence == 180.0  # default: three of the publisher's republishes
    quiet = GOOD.replace(b"vhost: erel}", b"vhost: erel, stream_silence: 45s}")
    assert load_agent_settings("agent.yaml", quiet).stream_silence == 45.0
    off = GOOD.replace(b"vhost: erel}", b"vhost: erel, stream_silence: 0s}")
    assert load_agent_settings("agent.yaml", off).stream_silence == 0.0


@pytest.mark.parametrize(
    ("old", "new", "line", "path"),
    [
        (b"host_id: web-1.example.com", b"host_id: 'web/1'", 5, "$.spec.host_id"),
        (b"reconcile_interval: 1m", b"reconcile_interval: often", 8, "$.spec.reconcile_interval"),
        (b"  state_dir", b"  colour: red\n  state_dir", 9, "$.spec.colour"),
        (b'urls: ["amqp', b'urls: ["http', 7, "$.spec.broker.urls[0]"),
        (b"vhost: erel}", b"vhost: erel, stream_silence: soon}", 7, "$.spec.broker.stream_silence"),
    ],
)
def test_errors_are_located(old: bytes, new: bytes, line: int, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_agent_settings("agent.yaml", GOOD.replace(old, new))
    p = err.value.problems[0]
    assert (p.file, p.line, p.path) == ("agent.yaml", line, path)


# -- the broker URL + vhost rule (model.brokerurl), one for every connection ----------------------

BARE = "amqp://agent:pw@mq-1:5672"


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://h", None),
        ("amqp://h:5672/", None),
        ("amqp://h/erel", "erel"),
        ("amqp://h/%2F", "/"),
        ("amqp://h/%2f", "/"),
        ("amqp://h/a%2Fb", "a/b"),
        ("amqps://u:p@h:5671/x%20y?heartbeat=5", "x y"),
    ],
)
def test_url_vhost(url: str, vhost: str | None) -> None:
    assert brokerurl.url_vhost(url) == vhost


@pytest.mark.parametrize(
    ("urls", "setting", "expected"),
    [
        # The setting applies to bare URLs (with or without a trailing slash).
        ([BARE], "erel", [f"{BARE}/erel"]),
        (
            [BARE + "/", "amqp://agent:pw@mq-2:5672/"],
            "erel",
            [f"{BARE}/erel", "amqp://agent:pw@mq-2:5672/erel"],
        ),
        # No setting: the URL's own vhost, else "/" (always spelled out, percent-encoded).
        ([f"{BARE}/erel"], None, [f"{BARE}/erel"]),
        ([BARE], None, [f"{BARE}/%2F"]),
        ([BARE + "/", f"{BARE}/%2F"], None, [f"{BARE}/%2F", f"{BARE}/%2F"]),
        # A URL naming the same vhost as the setting is fine; query and credentials kept.
        ([f"{BARE}/erel?heartbeat=5"], "erel", [f"{BARE}/erel?heartbeat=5"]),
        ([f"{BARE}/%2F"], "/", [f"{BARE}/%2F"]),
        ([BARE], "/", [f"{BARE}/%2F"]),
        ([BARE], "a/b c", [f"{BARE}/a%2Fb%20c"]),
        # A bare URL and one naming a vhost: the bare one follows.
        ([BARE, f"{BARE}/erel"], None, [f"{BARE}/erel", f"{BARE}/erel"]),
    ],
)
def test_broker_urls_apply_the_vhost_to_bare_urls(
    urls: list[str], setting: str | None, expected: list[str]
) -> None:
    assert list(brokerurl.broker_urls(urls, setting)) == expected


@pytest.mark.parametrize(
    ("urls", "setting", "reason"),
    [
        ([f"{BARE}/other"], "erel", "VhostMismatch"),
        ([f"{BARE}/%2F"], "erel", "VhostMismatch"),  # "/" spelled out is a vhost too
        ([f"{BARE}/a", f"{BARE}/b"], None, "VhostMismatch"),
        ([BARE], "", "EmptyVhost"),
        ([BARE], "a%2Fb", "UnreachableVhost"),
        (["mq-1:5672"], None, "BadBrokerUrl"),
        (["http://mq-1/"], "erel", "BadBrokerUrl"),
        ([], "erel", "NoBrokerUrl"),
    ],
)
def test_conflicting_or_bad_broker_settings_are_refused(
    urls: list[str], setting: str | None, reason: str
) -> None:
    with pytest.raises(brokerurl.BrokerUrlError) as err:
        brokerurl.broker_urls(urls, setting)
    assert err.value.reason == reason
    assert "pw" not in str(err.value)  # passwords are masked in messages


@pytest.mark.parametrize("vhost", ["/", "erel", "a/b", "x y", "ü", "a%b", "a+b", "a?b#c", "//"])
def test_aiormq_connects_to_exactly_the_vhost_meant(vhost: str) -> None:
    # What aio-pika really opens: aiormq derives the vhost from the URL path it is given.
    loop = asyncio.new_event_loop()
    try:
        (url,) = brokerurl.broker_urls([BARE], vhost)
        assert aiormq.Connection(url, loop=loop).vhost == vhost
    finally:
        loop.close()


def test_agent_settings_connect_to_the_vhost_setting() -> None:
    s = load_agent_settings("agent.yaml", GOOD)  # a bare URL and `vhost: erel`
    assert s.amqp_urls == ("amqp://agent:pw@127.0.0.1:5672/erel",)
    # A flag or environment URL without a vhost keeps the file's vhost setting.
    moved = s.with_overrides(broker_urls=("amqp://agent:pw@mq-9:5672",))
    assert moved.amqp_urls == ("amqp://agent:pw@mq-9:5672/erel",)
    assert AgentSettings(host_id="h").amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/%2F",)


def test_agent_settings_refuse_a_url_naming_another_vhost() -> None:
    bad = GOOD.replace(b'5672/"]', b'5672/other"]')
    with pytest.raises(ConfigError) as err:
        load_agent_settings("agent.yaml", bad)
    p = err.value.problems[0]
    assert (p.file, p.line, p.path) == ("agent.yaml", 7, "$.spec.broker.vhost")
    assert "'other'" in p.message and "'erel'" in p.message and "pw" not in p.message
    # The same conflict made by an override (flag or environment) after the file was read.
    s = load_agent_settings("agent.yaml", GOOD)
    with pytest.raises(ConfigError, match="names vhost 'x' but the vhost setting is 'erel'"):
        s.with_overrides(broker_urls=("amqp://agent:pw@mq-9:5672/x",))


# --------------------------------------------------------------------------- artifact limits

LIMITS = GOOD + b"  artifacts:\n    max_unpacked_size: 512MiB\n    max_members: 5000\n"


def test_artifact_limits_are_settings_with_defaults() -> None:
    default = load_agent_settings("agent.yaml", GOOD)
    assert (default.max_unpacked_bytes, default.max_archive_members) == (8 * 1024**3, 200_000)
    s = load_agent_settings("agent.yaml", LIMITS)
    assert (s.max_unpacked_bytes, s.max_archive_members) == (512 * 1024**2, 5000)
    in_bytes = LIMITS.replace(b"512MiB", b"1073741824")
    assert load_agent_settings("agent.yaml", in_bytes).max_unpacked_bytes == 1024**3


def test_the_agent_s_driver_gets_the_artifact_limits(tmp_path: Path) -> None:
    s = load_agent_settings("agent.yaml", LIMITS).with_overrides(
        state_dir=str(tmp_path / "state"),
        releases_dir=str(tmp_path / "releases"),
        cache_dir=str(tmp_path / "cache"),
    )
    counted = Agent(s).driver  # counted for the metrics, around the release driver
    assert isinstance(counted, CountingDriver)
    driver = counted.inner
    assert isinstance(driver, ReleaseDriver)
    assert (driver.settings.max_unpacked_bytes, driver.settings.max_archive_members) == (
        512 * 1024**2,
        5000,
    )


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        (b"512MiB", b"8GB", "$.spec.artifacts.max_unpacked_size"),
        (b"512MiB", b"1.5GiB", "$.spec.artifacts.max_unpacked_size"),
        (b"512MiB", b"0", "$.spec.artifacts.max_unpacked_size"),
        (b"512MiB", b"-1", "$.spec.artifacts.max_unpacked_size"),
        (b"512MiB", b"0MiB", "$.spec.artifacts.max_unpacked_size"),
        (b"5000", b"0", "$.spec.artifacts.max_members"),
        (b"5000", b"many", "$.spec.artifacts.max_members"),
        (b"max_members", b"max_files", "$.spec.artifacts.max_files"),
    ],
)
def test_bad_artifact_limits_are_located(old: bytes, new: bytes, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_agent_settings("agent.yaml", LIMITS.replace(old, new))
    p = err.value.problems[0]
    assert (p.file, p.path) == ("agent.yaml", path)
    assert p.line in (11, 12)


@pytest.mark.parametrize(
    ("text", "size", "canonical"),
    [
        ("8GiB", 8 * 1024**3, "8GiB"),
        ("512MiB", 512 * 1024**2, "512MiB"),
        ("1024B", 1024, "1KiB"),
        ("1000", 1000, "1000B"),
        (4096, 4096, "4KiB"),
        ("2TiB", 2 * 1024**4, "2TiB"),
    ],
)
def test_sizes(text: str | int, size: int, canonical: str) -> None:
    assert parse_size(text) == size
    assert format_size(size) == canonical
    assert parse_size(canonical) == size


@pytest.mark.parametrize("text", ["0", "0B", 0, -5, True, "8gib", "8 GiB", "1.5GiB", "", "8GiB\n"])
def test_sizes_refused(text: str | int) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("amqp://u:secret@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqps://u:secret@h/", "amqps://u:***@h/"),
        ("amqp://h:5672/", "amqp://h:5672/"),  # no user, nothing to hide
        ("amqp://u@h/", "amqp://u@h/"),  # a user without a password
        # Broken URLs (unencoded `/` or `@` in the password) still lose the whole password.
        ("amqp://u:pa/ss@h/", "amqp://u:***@h/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),
        (
            "tried amqp://a:x@h1/ and amqp://b:y@h2/: refused",
            "tried amqp://a:***@h1/ and amqp://b:***@h2/: refused",
        ),
    ],
)
def test_mask_hides_every_password(text: str, masked: str) -> None:
    assert brokerurl.mask(text) == masked


# -- TLS for amqps:// URLs (model.brokerurl.with_tls) ---------------------------------------------

TLS = b"""  broker:
    urls: ["amqps://agent:pw@mq-1:5671/", "amqps://agent:pw@mq-2:5671/?heartbeat=5"]
    vhost: erel
    tls: {ca_file: /etc/erel/ca.pem, cert_file: /etc/erel/web-1.pem, key_file: /etc/erel/web-1.key}
"""


def test_tls_files_ride_on_every_amqps_url() -> None:
    s = load_agent_settings(
        "agent.yaml", GOOD.replace(b'  broker: {urls: ["amqp://agent:pw@127.0.0.1:5672/"], '
                                   b"vhost: erel}\n", TLS)
    )  # fmt: skip
    assert s.broker_tls is not None and s.broker_tls.ca_file == "/etc/erel/ca.pem"
    first, second = s.amqp_urls
    assert first == (
        "amqps://agent:pw@mq-1:5671/erel?cafile=%2Fetc%2Ferel%2Fca.pem"
        "&certfile=%2Fetc%2Ferel%2Fweb-1.pem&keyfile=%2Fetc%2Ferel%2Fweb-1.key"
    )
    assert second.startswith("amqps://agent:pw@mq-2:5671/erel?heartbeat=5&cafile=")
    assert brokerurl.shown(first) == "amqps://agent:***@mq-1:5671/erel"


@pytest.mark.parametrize(
    ("tls", "said"),
    [
        (b"tls: {ca_file: /ca.pem}", "is not amqps://"),  # the URL is amqp://: in clear
        (b"tls: {cert_file: /c.pem}", "needs its key"),  # a certificate without its key
    ],
)
def test_tls_settings_that_cannot_work_are_refused_where_they_are(tls: bytes, said: str) -> None:
    text = GOOD.replace(b"vhost: erel}", b"vhost: erel, " + tls + b"}")
    with pytest.raises(ConfigError) as err:
        load_agent_settings("agent.yaml", text)
    p = err.value.problems[0]
    assert (p.line, p.path) == (7, "$.spec.broker.tls") and said in p.message
