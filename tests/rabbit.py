"""Pytest plugin: RabbitMQ for integration and e2e tests (`pytest_plugins = ["tests.rabbit"]`).

Fixtures:
- `rabbit` (session): ONE private node (`dev.rabbitnode.RabbitNode`) for the whole run,
  under a temp dir, stopped at the end. With `EREL_TEST_AMQP_URL` set, that broker is used
  instead (`rabbit.node` is None; `rabbit.ctl` runs `rabbitmqctl`, with `-n
  $EREL_TEST_RABBITMQ_NODE` if set, and must be able to reach it).
- `vhost` (function): a fresh vhost per test, deleted afterwards; yields an AMQP URL for it, so
  tests are isolated without restarting the node.
- `fresh_rabbit` (function): a node of the test's own, for fault tests that kill or restart
  it; skipped when `EREL_TEST_AMQP_URL` is set.

Vhosts are made through `erl_call` on the private node (milliseconds) rather than `rabbitmqctl`
(~0.7 s per call), which keeps a per-test vhost cheap.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from erel_sync.adapters.broker import rabbitctl
from erel_sync.adapters.broker.setup import BrokerSetupSpec
from erel_sync.dev.rabbitnode import SERVER_BIN_DIR, RabbitNode, RabbitNodeError

EXTERNAL_URL_ENV = "EREL_TEST_AMQP_URL"
EXTERNAL_NODE_ENV = "EREL_TEST_RABBITMQ_NODE"


def _erl_binary(text: str) -> str:
    return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"/utf8>>'


@dataclass
class Rabbit:
    """The broker of the test session."""

    url: str
    node: RabbitNode | None

    @property
    def user(self) -> str:
        return unquote(urlsplit(self.url).username or "guest")

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """`rabbitmqctl ARGS` against the session broker; returns stdout."""
        if self.node is not None:
            return self.node.ctl(*args, stdin=stdin, timeout=timeout)
        exe = shutil.which("rabbitmqctl") or str(SERVER_BIN_DIR / "rabbitmqctl")
        node = os.environ.get(EXTERNAL_NODE_ENV)
        return rabbitctl.run(
            exe, *args, node=node, stdin=stdin, timeout=timeout, error=RabbitNodeError
        )

    def url_for(self, vhost: str, user: str | None = None, password: str | None = None) -> str:
        """The session URL pointed at `vhost`, optionally with other credentials."""
        parts = urlsplit(self.url)
        user = user if user is not None else unquote(parts.username or "guest")
        password = password if password is not None else unquote(parts.password or "guest")
        host = parts.hostname or "127.0.0.1"
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, "/" + quote(vhost, safe=""), parts.query, ""))

    def add_vhost(self, name: str) -> None:
        """Create `name` and give the session user every permission in it."""
        if self.node is not None and shutil.which("erl_call"):
            v, u, all_ = _erl_binary(name), _erl_binary(self.user), _erl_binary(".*")
            acting = _erl_binary("erel-tests")
            out = self.node.eval(
                f"ok = rabbit_vhost:add({v}, {acting}), "
                f"rabbit_auth_backend_internal:set_permissions({u}, {v}, {all_}, {all_}, "
                f"{all_}, {acting})."
            )
            if out != "ok":
                raise RabbitNodeError(f"add vhost {name}: {out}")
            return
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")

    def delete_vhost(self, name: str) -> None:
        if self.node is not None and shutil.which("erl_call"):
            self.node.eval(f'rabbit_vhost:delete({_erl_binary(name)}, <<"erel-tests">>).')
            return
        self.ctl("delete_vhost", name)

    def delete_user(self, name: str) -> None:
        if self.node is not None and shutil.which("erl_call"):
            self.node.eval(
                f'rabbit_auth_backend_internal:delete_user({_erl_binary(name)}, <<"erel-tests">>).'
            )
            return
        self.ctl("delete_user", name)


def unique_name(prefix: str, hint: str = "") -> str:
    """A name no other test (or test run) uses: readable hint plus random hex."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:32]
    return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}" if slug else f"{prefix}-{uuid.uuid4().hex[:8]}"


def setup_spec(vhost_prefix: str) -> BrokerSetupSpec:
    """What `erel-sync broker setup` makes, with names and passwords of this test's own: a
    vhost, and publisher, agent and operator users."""
    return BrokerSetupSpec(
        vhost=unique_name(vhost_prefix),
        publisher_user=unique_name("pub"),
        publisher_password=uuid.uuid4().hex,
        agent_user=unique_name("agent"),
        agent_password=uuid.uuid4().hex,
        operator_user=unique_name("op"),
        operator_password=uuid.uuid4().hex,
    )


def _require_server() -> None:
    if not (SERVER_BIN_DIR / "rabbitmq-server").exists():
        pytest.fail(
            f"RabbitMQ server not found in {SERVER_BIN_DIR}: run `make setup`, or set "
            f"{EXTERNAL_URL_ENV} to use a running broker"
        )


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield Rabbit(url=external, node=None)
        return
    _require_server()
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield Rabbit(url=node.url, node=node)
    finally:
        node.stop()


@pytest.fixture
def vhost(rabbit: Rabbit, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh vhost for this test (the session user has all permissions); yields its URL."""
    name = unique_name("t", request.node.name)
    rabbit.add_vhost(name)
    try:
        yield rabbit.url_for(name)
    finally:
        rabbit.delete_vhost(name)


@pytest.fixture
def fresh_rabbit(tmp_path: Path) -> Iterator[RabbitNode]:
    """A node of this test's own, to kill and restart; stopped (and swept) at teardown."""
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"{EXTERNAL_URL_ENV} is set: fault tests need a private node to kill")
    _require_server()
    node = RabbitNode(tmp_path / "rabbit")
    node.start()
    try:
        yield node
    finally:
        node.stop()
