"""Permissions made by `erel-sync broker setup` (`adapters.broker.setup`) on a real RabbitMQ 3.10.

One vhost with one publisher, one agent and one operator user is set up per module (rabbitmqctl
is slow); each test uses its own routing keys and markers. What must hold (docs/broker.md):
- the publisher publishes confirmed snapshots to `erel.config`, which land in the stream with the
  broker-validated `user_id`;
- an agent can neither publish to `erel.config` nor through the default exchange (`amq.default`),
  nor re-declare or delete the stream, nor read `erel.status`: ACCESS_REFUSED closes the channel;
- an agent can read the stream from `first`, send heartbeats, bind its own queues to
  `erel.control`, and ask `state.request`, answered by the publisher through `erel.sync`; it
  cannot publish the publisher's `publisher.*` events (topic permissions);
- the publisher, too, has no write on `amq.default`;
- the operator can do what the CLI does (`adapters.broker.opsclient`: presence read with its marker,
  a status query and a signed command with their replies, heartbeats, the revisions stream) and
  nothing that writes config: not `erel.config`, not a stream queue, not `amq.default`, not the
  routing keys of heartbeats, presence records or publisher events;
- rollouts: only the publisher writes `erel.rollout` (its own exchange, so rollout documents and
  snapshots never mix), which agents and operators read; agents publish `rollout.<host>`
  events, which reach the publisher and the `erel.rollout.events` stream operators read;
  operators send `rollout.<group>` commands to the publisher, and write no rollout stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from typer.testing import CliRunner

from erel_sync.adapters.broker import messages as amqp
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.adapters.broker.setup import (
    AGENT_PERMISSIONS,
    AGENT_TOPIC_PERMISSIONS,
    OPERATOR_PERMISSIONS,
    OPERATOR_TOPIC_PERMISSIONS,
    PUBLISHER_PERMISSIONS,
    BrokerSetupSpec,
    observe,
    plan_ctl,
    setup_broker,
)
from erel_sync.cli.broker import app as broker_app
from erel_sync.core import control as commands
from erel_sync.core.snapshot import generate_key, load_private_key
from erel_sync.dev.rabbitnode import SERVER_BIN_DIR
from tests.rabbit import Rabbit, setup_spec, unique_name

DEADLINE = 10.0


@dataclass(frozen=True)
class Setup:
    spec: BrokerSetupSpec
    publisher_url: str
    agent_url: str
    operator_url: str
    log: tuple[str, ...]


@pytest.fixture(scope="module")
def broker(rabbit: Rabbit) -> Iterator[Setup]:
    spec = setup_spec("perm")
    log: list[str] = []
    setup_broker(spec, rabbit.ctl, rabbit.url, echo=log.append)
    try:
        yield Setup(
            spec,
            rabbit.url_for(spec.vhost, spec.publisher_user, spec.publisher_password),
            rabbit.url_for(spec.vhost, spec.agent_user, spec.agent_password),
            rabbit.url_for(spec.vhost, spec.operator_user, spec.operator_password),
            tuple(log),
        )
    finally:
        rabbit.delete_vhost(spec.vhost)
        rabbit.delete_user(spec.publisher_user)
        rabbit.delete_user(spec.agent_user)
        rabbit.delete_user(str(spec.operator_user))


@pytest.fixture
async def publisher(broker: Setup) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker.publisher_url)
    async with connection:
        yield connection


@pytest.fixture
async def agent(broker: Setup) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker.agent_url)
    async with connection:
        yield connection


@pytest.fixture
async def operator(broker: Setup) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker.operator_url)
    async with connection:
        yield connection


def marker(what: str) -> bytes:
    return f"{what}-{uuid.uuid4().hex}".encode()


async def publish_snapshot(connection: AbstractConnection, body: bytes, user: str) -> object:
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topo.CONFIG_EXCHANGE, ensure=True)
    confirm = await exchange.publish(
        aio_pika.Message(body, user_id=user, message_id=body.decode(), content_type="text/plain"),
        routing_key=topo.CONFIG_ROUTING_KEY,
        mandatory=True,
    )
    await channel.close()
    return confirm


async def read_stream_until(
    connection: AbstractConnection, last: bytes, offset: str = "first"
) -> list[AbstractIncomingMessage]:
    """Every stream message from `offset` up to and including the one whose body is `last`."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)  # streams refuse consumers without prefetch
    queue = await channel.get_queue(topo.CONFIG_STREAM, ensure=True)  # passive: no configure
    got: list[AbstractIncomingMessage] = []
    seen = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.append(message)
        await message.ack()  # streams require manual acks
        if message.body == last:
            seen.set()

    tag = await queue.consume(on_message, arguments={"x-stream-offset": offset})
    async with asyncio.timeout(DEADLINE):
        await seen.wait()
    await queue.cancel(tag)
    await channel.close()
    return got


async def expect_refused(channel: AbstractChannel, action: Awaitable[object]) -> str:
    """Await `action`; it must fail with ACCESS_REFUSED, which closes `channel`."""
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as info:
        await action
    assert channel.is_closed  # the broker closed it: the refusal is not silent
    return str(info.value)


async def first_message(queue: aio_pika.abc.AbstractQueue) -> AbstractIncomingMessage:
    async with asyncio.timeout(DEADLINE), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            return message
    raise AssertionError("queue iterator ended")


# -- setup itself ----------------------------------------------------------------------------------


def test_setup_grants_the_documented_permissions(broker: Setup, rabbit: Rabbit) -> None:
    rows = json.loads(
        rabbit.ctl("-q", "list_permissions", "-p", broker.spec.vhost, "--formatter", "json")
    )
    granted = {row["user"]: (row["configure"], row["write"], row["read"]) for row in rows}
    p, a, o = PUBLISHER_PERMISSIONS, AGENT_PERMISSIONS, OPERATOR_PERMISSIONS
    assert granted == {
        broker.spec.publisher_user: (p.configure, p.write, p.read),
        broker.spec.agent_user: (a.configure, a.write, a.read),
        broker.spec.operator_user: (o.configure, o.write, o.read),
    }
    rows = json.loads(
        rabbit.ctl("-q", "list_topic_permissions", "-p", broker.spec.vhost, "--formatter", "json")
    )
    topics = {(row["user"], row["exchange"], row["write"], row["read"]) for row in rows}
    assert topics == {
        *((broker.spec.agent_user, t.exchange, t.write, t.read) for t in AGENT_TOPIC_PERMISSIONS),
        *(
            (broker.spec.operator_user, t.exchange, t.write, t.read)
            for t in OPERATOR_TOPIC_PERMISSIONS
        ),
    }
    assert any("add_vhost" in line for line in broker.log)


def test_second_run_through_the_cli_only_resets_passwords_and_permissions(
    broker: Setup, rabbit: Rabbit
) -> None:
    steps = plan_ctl(broker.spec, observe(rabbit.ctl))
    assert [s.args[0] for s in steps] == [
        *("change_password", "set_permissions"),  # publisher
        *("change_password", "set_permissions", "set_topic_permissions"),  # agent
        *("change_password", "set_permissions", *["set_topic_permissions"] * 3),  # operator
    ]
    if rabbit.node is None:
        setup_broker(broker.spec, rabbit.ctl, rabbit.url, echo=lambda _: None)
        return
    spec = broker.spec
    result = CliRunner().invoke(
        broker_app,
        [
            "setup",
            "--amqp-url",
            rabbit.url,
            "--vhost",
            spec.vhost,
            "--publisher-user",
            spec.publisher_user,
            "--agent-user",
            spec.agent_user,
            "--operator-user",
            str(spec.operator_user),
            "--node",
            rabbit.node.node_name,
            "--rabbitmqctl",
            str(SERVER_BIN_DIR / "rabbitmqctl"),
        ],
        # rabbitmqctl reaches the private node through its HOME (cookie); passwords from env.
        env={
            **rabbit.node.env(),
            "EREL_PUBLISHER_PASSWORD": spec.publisher_password,
            "EREL_AGENT_PASSWORD": spec.agent_password,
            "EREL_OPERATOR_PASSWORD": spec.operator_password,
        },
    )
    assert result.exit_code == 0, result.output
    assert "skip vhost" in result.output
    assert "change_password" in result.output
    assert "add_user" not in result.output
    assert spec.publisher_password not in result.output
    assert spec.operator_password not in result.output
    assert "exchange.declare erel.config" in result.output  # the topology was re-declared


def test_cli_dry_run_prints_a_script_without_secrets() -> None:
    result = CliRunner().invoke(
        broker_app,
        [
            "setup",
            "--amqp-url",
            "amqp://admin:s3cret@broker:5672/",
            "--dry-run",
            "--vhost",
            "erel",
            "--node",
            "rabbit@broker",
            "--operator-user",
            "ops",
        ],
        env={"EREL_OPERATOR_PASSWORD": "op-s3cret"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "rabbitmqctl -n rabbit@broker add_vhost erel" in lines
    a, o = AGENT_PERMISSIONS, OPERATOR_PERMISSIONS
    assert (
        f"rabbitmqctl -n rabbit@broker set_permissions -p erel erel-agent "
        f"'{a.configure}' '{a.write}' '{a.read}'"
    ) in lines
    assert (
        f"rabbitmqctl -n rabbit@broker set_permissions -p erel ops "
        f"'{o.configure}' '{o.write}' '{o.read}'"
    ) in lines
    for user, topics in (
        ("erel-agent", AGENT_TOPIC_PERMISSIONS),
        ("ops", OPERATOR_TOPIC_PERMISSIONS),
    ):
        for t in topics:
            assert (
                f"rabbitmqctl -n rabbit@broker set_topic_permissions -p erel {user} {t.exchange} "
                f"'{t.write}' '{t.read}'"
            ) in lines
    assert "s3cret" not in result.output
    assert '"${EREL_AGENT_PASSWORD:?}"' in result.output
    assert '"${EREL_OPERATOR_PASSWORD:?}"' in result.output


@pytest.mark.parametrize(
    ("url", "flag", "vhost"),
    [
        ("amqp://broker:5672/erel", None, "erel"),  # the vhost the URL names
        ("amqp://broker:5672", "erel", "erel"),  # --vhost for a bare URL
        ("amqp://broker:5672/", None, "/"),
        ("amqp://broker:5672/%2F", "/", "/"),
    ],
)
def test_cli_setup_takes_the_vhost_by_the_one_rule(url: str, flag: str | None, vhost: str) -> None:
    args = ["setup", "--amqp-url", url, "--dry-run", *(["--vhost", flag] if flag else [])]
    result = CliRunner().invoke(broker_app, args, env={"EREL_AMQP_VHOST": None})
    assert result.exit_code == 0, result.output
    quoted = "/" if vhost == "/" else vhost
    assert f"rabbitmqctl add_vhost {quoted}" in result.output.splitlines()
    assert f"set_permissions -p {quoted} erel-agent" in result.output


def test_cli_setup_refuses_a_url_naming_another_vhost() -> None:
    result = CliRunner().invoke(
        broker_app,
        [
            "setup",
            "--amqp-url",
            "amqp://a:s3cret@broker:5672/erel",
            "--vhost",
            "other",
            "--dry-run",
        ],
    )
    assert result.exit_code == 2
    assert "VhostMismatch" in result.output and "s3cret" not in result.output
    assert "rabbitmqctl" not in result.output  # nothing planned, nothing run


# -- publisher ---------------------------------------------------------------------------------------


async def test_publisher_publish_is_confirmed_and_lands_in_stream(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    body = marker("snapshot")
    confirm = await publish_snapshot(publisher, body, broker.spec.publisher_user)
    assert isinstance(confirm, aiormq.spec.Basic.Ack)  # not returned: the stream is bound
    got = await read_stream_until(agent, body)
    assert got[-1].user_id == broker.spec.publisher_user
    assert isinstance(got[-1].headers.get("x-stream-offset"), int)


async def test_broker_refuses_a_forged_user_id(
    broker: Setup, publisher: AbstractConnection
) -> None:
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
        await publish_snapshot(publisher, marker("forged"), broker.spec.agent_user)


# -- agent: refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [(topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY), ("", topo.CONFIG_STREAM)],
    ids=["erel.config", "amq.default"],
)
async def test_agent_cannot_write_the_config_stream(
    broker: Setup,
    publisher: AbstractConnection,
    agent: AbstractConnection,
    exchange: str,
    routing_key: str,
) -> None:
    channel = await agent.channel(publisher_confirms=True)
    target = (
        channel.default_exchange
        if exchange == ""
        else await channel.get_exchange(exchange, ensure=False)
    )
    evil = marker("evil")
    error = await expect_refused(
        channel, target.publish(aio_pika.Message(evil), routing_key=routing_key)
    )
    assert "ACCESS_REFUSED" in error
    assert f"exchange '{exchange or topo.DEFAULT_EXCHANGE_RESOURCE}'" in error
    # Nothing of the agent's reached the stream: read up to a later publisher marker.
    after = marker("after")
    await publish_snapshot(publisher, after, broker.spec.publisher_user)
    bodies = [m.body for m in await read_stream_until(agent, after)]
    assert evil not in bodies


async def test_agent_cannot_redeclare_or_delete_the_stream(agent: AbstractConnection) -> None:
    channel = await agent.channel()
    await expect_refused(
        channel,
        channel.declare_queue(
            topo.CONFIG_STREAM, durable=True, arguments=dict(topo.CONFIG_STREAM_ARGUMENTS)
        ),
    )
    channel = await agent.channel()
    await expect_refused(channel, channel.queue_delete(topo.CONFIG_STREAM))


async def test_agent_cannot_read_status_nor_name_foreign_queues(
    agent: AbstractConnection,
) -> None:
    channel = await agent.channel()
    queue = await channel.declare_queue("", exclusive=True)
    await expect_refused(channel, queue.bind(topo.STATUS_EXCHANGE, routing_key="#"))
    channel = await agent.channel()
    await expect_refused(channel, channel.declare_queue("erel.not-an-agent", exclusive=True))


async def test_agent_cannot_answer_through_direct_reply_to(agent: AbstractConnection) -> None:
    # Replying to amq.rabbitmq.reply-to.* is a publish to the default exchange: it needs write
    # on amq.default, which agents must not have. Peer answers go through erel.sync instead.
    channel = await agent.channel(publisher_confirms=True)
    error = await expect_refused(
        channel,
        channel.default_exchange.publish(
            aio_pika.Message(b"reply"),
            routing_key=f"{topo.DIRECT_REPLY_TO}.g1h2AA==.anything",
            mandatory=False,
        ),
    )
    assert topo.DEFAULT_EXCHANGE_RESOURCE in error


# -- agent: allowed ------------------------------------------------------------------------------


async def test_agent_reads_the_stream_from_first(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    one, two = marker("one"), marker("two")
    await publish_snapshot(publisher, one, broker.spec.publisher_user)
    await publish_snapshot(publisher, two, broker.spec.publisher_user)
    got = await read_stream_until(agent, two, offset="first")
    offsets = [o for m in got if isinstance(o := m.headers.get("x-stream-offset"), int)]
    assert len(offsets) == len(got)  # every delivery says where it is in the stream
    assert offsets[0] == 0  # from the very start of the stream
    assert offsets == sorted(offsets)
    bodies = [m.body for m in got]
    assert bodies.index(one) == len(bodies) - 2


async def test_agent_heartbeat_reaches_status_watchers(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    host = unique_name("h")
    watch = await publisher.channel()
    queue = await watch.declare_queue("", exclusive=True)
    await queue.bind(topo.STATUS_EXCHANGE, routing_key=topo.host_key(host))

    channel = await agent.channel(publisher_confirms=True)
    status = await channel.get_exchange(topo.STATUS_EXCHANGE, ensure=True)
    body = marker("heartbeat")
    confirm = await status.publish(
        aio_pika.Message(body, user_id=broker.spec.agent_user),
        routing_key=topo.host_key(host),
        mandatory=True,
    )
    assert isinstance(confirm, aiormq.spec.Basic.Ack)
    got = await first_message(queue)
    assert got.body == body
    assert got.user_id == broker.spec.agent_user


async def test_agent_state_request_is_answered_by_the_publisher_through_erel_sync(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    # The publisher answers state.request on a queue bound to erel.sync, to the requester's
    # `reply.<host>` key on erel.sync (not direct reply-to: no one needs write on amq.default).
    serve = await publisher.channel(publisher_confirms=True)
    requests = await serve.declare_queue("", exclusive=True)
    await requests.bind(topo.SYNC_EXCHANGE, routing_key=topo.STATE_REQUEST_KEY)
    sync_out = await serve.get_exchange(topo.SYNC_EXCHANGE, ensure=True)

    async def answer(message: AbstractIncomingMessage) -> None:
        async with message.process():
            assert message.reply_to is not None
            await sync_out.publish(
                aio_pika.Message(b"state:" + message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to,
            )

    await requests.consume(answer)

    host = unique_name("h")
    channel = await agent.channel()
    inbox = await channel.declare_queue(topo.agent_queue(host, "replies"), exclusive=True)
    await inbox.bind(topo.SYNC_EXCHANGE, routing_key=topo.reply_key(host))
    sync = await channel.get_exchange(topo.SYNC_EXCHANGE, ensure=True)
    correlation = uuid.uuid4().hex
    await sync.publish(
        aio_pika.Message(b"give", reply_to=topo.reply_key(host), correlation_id=correlation),
        routing_key=topo.STATE_REQUEST_KEY,
    )
    got = await first_message(inbox)
    assert got.body == b"state:give"
    assert got.correlation_id == correlation


async def test_publisher_cannot_publish_through_the_default_exchange(
    publisher: AbstractConnection,
) -> None:
    channel = await publisher.channel(publisher_confirms=True)
    error = await expect_refused(
        channel,
        channel.default_exchange.publish(
            aio_pika.Message(b"x"), routing_key=topo.PRESENCE_STREAM, mandatory=False
        ),
    )
    assert topo.DEFAULT_EXCHANGE_RESOURCE in error


async def test_agent_answers_a_peer_through_erel_sync(
    broker: Setup, agent: AbstractConnection
) -> None:
    asker = unique_name("h")
    inbox_channel = await agent.channel()
    inbox = await inbox_channel.declare_queue("", exclusive=True)
    await inbox.bind(topo.SYNC_EXCHANGE, routing_key=topo.reply_key(asker))

    other = await aio_pika.connect(broker.agent_url)
    async with other:
        channel = await other.channel(publisher_confirms=True)
        sync = await channel.get_exchange(topo.SYNC_EXCHANGE, ensure=False)
        body = marker("peer-state")
        await sync.publish(aio_pika.Message(body), routing_key=topo.reply_key(asker))
    assert (await first_message(inbox)).body == body


async def test_agent_own_queues_receive_control_commands(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    host, group = unique_name("h"), unique_name("g")
    channel = await agent.channel()
    named = await channel.declare_queue(topo.agent_queue(host, "control"), exclusive=True)
    await named.bind(topo.CONTROL_EXCHANGE, routing_key=topo.host_key(host))
    server_named = await channel.declare_queue("", exclusive=True)
    assert server_named.name.startswith(topo.SERVER_NAMED_PREFIX)
    await server_named.bind(topo.CONTROL_EXCHANGE, routing_key=topo.group_key(group))

    send = await publisher.channel(publisher_confirms=True)
    control = await send.get_exchange(topo.CONTROL_EXCHANGE, ensure=True)
    for key in (topo.host_key(host), topo.group_key(group)):
        await control.publish(aio_pika.Message(key.encode()), routing_key=key, mandatory=True)
    assert (await first_message(named)).body == topo.host_key(host).encode()
    assert (await first_message(server_named)).body == topo.group_key(group).encode()


async def test_agent_cannot_send_control_commands(agent: AbstractConnection) -> None:
    """A compromised agent cannot command other hosts (signatures would refuse it anyway)."""
    channel = await agent.channel(publisher_confirms=True)
    control = await channel.get_exchange(topo.CONTROL_EXCHANGE, ensure=False)
    error = await expect_refused(
        channel, control.publish(aio_pika.Message(b"{}"), routing_key=topo.ALL_KEY)
    )
    assert "ACCESS_REFUSED" in error and f"exchange '{topo.CONTROL_EXCHANGE}'" in error


async def test_agent_presence_lands_in_the_presence_stream(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    host = unique_name("h")
    channel = await agent.channel(publisher_confirms=True)
    status = await channel.get_exchange(topo.STATUS_EXCHANGE, ensure=False)
    body = marker("presence")
    await status.publish(aio_pika.Message(body), routing_key=topo.presence_key(host))
    reader = await publisher.channel()
    await reader.set_qos(prefetch_count=100)
    stream = await reader.declare_queue(topo.PRESENCE_STREAM, passive=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on(m: AbstractIncomingMessage) -> None:
        await got.put(m.body)
        await m.ack()

    await stream.consume(on, arguments={"x-stream-offset": "first"})
    async with asyncio.timeout(10):
        while (await got.get()) != body:
            pass


async def test_agent_cannot_publish_publisher_events(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    """Topic permissions: `publisher.*` on erel.status feeds the revisions stream `wait` reads."""
    channel = await agent.channel(publisher_confirms=True)
    status = await channel.get_exchange(topo.STATUS_EXCHANGE, ensure=False)
    error = await expect_refused(
        channel,
        status.publish(aio_pika.Message(b"{}"), routing_key=topo.PUBLISHER_PUBLISHED_KEY),
    )
    assert f"topic '{topo.PUBLISHER_PUBLISHED_KEY}'" in error


# -- operator: what the CLI does -------------------------------------------------------------------


async def test_operator_runs_presence_read_status_query_and_signed_command(
    broker: Setup, agent: AbstractConnection
) -> None:
    """The CLI's own code (`OpsClient`) as the operator against an agent side served by the
    agent's own code (`serve_control`) as the agent user."""
    host = unique_name("h")
    serving = await agent.channel()

    async def on_command(raw: bytes) -> bytes:
        doc = json.loads(raw)
        return commands.reply(
            doc["id"], host_id=host, instance="i1", ok=True, result={"did": doc["command"]}
        )

    await amqp.serve_control(serving, host, "i1", on_command)
    presence = {"kind": "presence", "host_id": host, "instance": "i1", "state": "alive"}
    await amqp.publish(
        await agent.channel(publisher_confirms=True),
        topo.STATUS_EXCHANGE,
        topo.presence_key(host),
        json.dumps({**presence, "sent": time.time()}).encode(),
    )
    # The operator may write the marker key, so it could put a presence body there: such a
    # record must not make a host up (only `presence.<its host_id>` counts).
    forged = unique_name("forged")
    async with await aio_pika.connect(broker.operator_url) as op:
        await amqp.publish(
            await op.channel(publisher_confirms=True),
            topo.STATUS_EXCHANGE,
            topo.presence_key("~marker"),
            json.dumps({**presence, "host_id": forged, "sent": time.time()}).encode(),
        )
    pem, _ = generate_key()
    async with OpsClient([broker.operator_url]) as client:
        # The presence read ends at a marker of its own, which the operator may append.
        assert await client._append_marker(uuid.uuid4().hex)
        records = await client.read_presence(time.time() - 60)
        assert host in {r.get("host_id") for r in records}
        assert forged not in {r.get("host_id") for r in records}
        now = time.time()
        query = commands.new_command("status", None, topo.host_key(host), now=now, ttl=30)
        signed = commands.new_command(
            "restart",
            "hello",
            topo.host_key(host),
            now=now,
            ttl=30,
            key=load_private_key(pem),
            key_id="ops",
        )
        for cmd in (query, signed):
            await client.send(cmd, 30)  # mandatory host.<id> publish: routed and confirmed
            replies = await client.collect(cmd.id, expected={host}, within=DEADLINE)
            assert [r["result"] for r in replies[host]] == [{"did": cmd.command}]


async def test_operator_follows_heartbeats(
    broker: Setup, agent: AbstractConnection, operator: AbstractConnection
) -> None:
    host = unique_name("h")
    beats: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_status(key: str, body: bytes) -> None:
        await beats.put((key, body))

    await amqp.consume_status(await operator.channel(), on_status, pattern="host.*")
    body = marker("heartbeat")
    await amqp.publish(
        await agent.channel(publisher_confirms=True),
        topo.STATUS_EXCHANGE,
        topo.host_key(host),
        body,
    )
    async with asyncio.timeout(DEADLINE):
        while (await beats.get()) != (topo.host_key(host), body):
            pass


async def test_operator_reads_the_revisions_stream(
    broker: Setup, publisher: AbstractConnection, operator: AbstractConnection
) -> None:
    body = marker("published")
    await amqp.publish(
        await publisher.channel(publisher_confirms=True),
        topo.STATUS_EXCHANGE,
        topo.PUBLISHER_PUBLISHED_KEY,
        body,
        user_id=broker.spec.publisher_user,
    )
    channel = await operator.channel()
    await channel.set_qos(prefetch_count=100)
    stream = await channel.declare_queue(topo.REVISIONS_STREAM, passive=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on(m: AbstractIncomingMessage) -> None:
        await got.put(m.body)
        await m.ack()

    await stream.consume(on, arguments={"x-stream-offset": "first"})
    async with asyncio.timeout(DEADLINE):
        while (await got.get()) != body:
            pass


# -- operator: refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "routing_key", "refused_on"),
    [
        (topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY, f"exchange '{topo.CONFIG_EXCHANGE}'"),
        ("", topo.CONFIG_STREAM, f"exchange '{topo.DEFAULT_EXCHANGE_RESOURCE}'"),
        ("", topo.PRESENCE_STREAM, f"exchange '{topo.DEFAULT_EXCHANGE_RESOURCE}'"),
        (topo.SYNC_EXCHANGE, topo.STATE_REQUEST_KEY, f"exchange '{topo.SYNC_EXCHANGE}'"),
        (topo.SYNC_EXCHANGE, topo.reply_key("h1"), f"exchange '{topo.SYNC_EXCHANGE}'"),
        # Topic permissions: no heartbeats, presence records or publisher events.
        (topo.STATUS_EXCHANGE, topo.host_key("h1"), "topic 'host.h1'"),
        (topo.STATUS_EXCHANGE, topo.presence_key("h1"), "topic 'presence.h1'"),
        (topo.STATUS_EXCHANGE, topo.PUBLISHER_REJECTED_KEY, "topic 'publisher.rejected'"),
        (topo.STATUS_EXCHANGE, topo.PUBLISHER_PUBLISHED_KEY, "topic 'publisher.published'"),
        (topo.CONTROL_EXCHANGE, "anything.else", "topic 'anything.else'"),
    ],
    ids=lambda v: str(v) or "default",
)
async def test_operator_cannot_publish_what_the_cli_does_not(
    operator: AbstractConnection,
    exchange: str,
    routing_key: str,
    refused_on: str,
) -> None:
    channel = await operator.channel(publisher_confirms=True)
    target = (
        channel.default_exchange
        if exchange == ""
        else await channel.get_exchange(exchange, ensure=False)
    )
    evil = marker("operator")
    error = await expect_refused(
        channel, target.publish(aio_pika.Message(evil), routing_key=routing_key, mandatory=False)
    )
    assert "ACCESS_REFUSED" in error and refused_on in error


@pytest.mark.parametrize(
    "stream", [topo.CONFIG_STREAM, topo.PRESENCE_STREAM, topo.REVISIONS_STREAM]
)
async def test_operator_cannot_route_into_a_stream(
    operator: AbstractConnection, stream: str
) -> None:
    """Binding a stream to erel.control (which the operator may write) would let its commands
    land in the stream: queue.bind needs write on the queue, which the operator has not."""
    channel = await operator.channel()
    queue = await channel.declare_queue(stream, passive=True)
    error = await expect_refused(channel, queue.bind(topo.CONTROL_EXCHANGE, routing_key="#"))
    assert f"queue '{stream}'" in error


async def test_operator_cannot_read_config_nor_bind_foreign_keys(
    operator: AbstractConnection,
) -> None:
    channel = await operator.channel()
    await channel.set_qos(prefetch_count=10)
    stream = await channel.declare_queue(topo.CONFIG_STREAM, passive=True)

    async def ignore(message: AbstractIncomingMessage) -> None:
        await message.ack()

    await expect_refused(channel, stream.consume(ignore))
    # Its own queue may not listen to agents' state answers nor to state requests.
    for key in (topo.reply_key("h1"), topo.STATE_REQUEST_KEY, "#"):
        channel = await operator.channel()
        queue = await channel.declare_queue("", exclusive=True)
        error = await expect_refused(channel, queue.bind(topo.SYNC_EXCHANGE, routing_key=key))
        assert "topic" in error
    channel = await operator.channel()
    await expect_refused(channel, channel.declare_queue("erel.not-the-operator", exclusive=True))


# -- rollouts (issue 12): the rollout stream, rollout events, `rollout.<group>` commands ----------


async def read_stream(
    connection: AbstractConnection, stream: str, last: bytes
) -> list[AbstractIncomingMessage]:
    """Every message of `stream` from `first` up to and including the one whose body is `last`."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)
    queue = await channel.declare_queue(stream, passive=True)
    got: list[AbstractIncomingMessage] = []
    seen = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.append(message)
        await message.ack()
        if message.body == last:
            seen.set()

    tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
    async with asyncio.timeout(DEADLINE):
        await seen.wait()
    await queue.cancel(tag)
    await channel.close()
    return got


async def test_publisher_rollout_documents_reach_agents_and_operators_not_the_config_stream(
    broker: Setup,
    publisher: AbstractConnection,
    agent: AbstractConnection,
    operator: AbstractConnection,
) -> None:
    doc = marker("rollout-doc")
    await amqp.publish(
        await publisher.channel(publisher_confirms=True),
        topo.ROLLOUT_EXCHANGE,
        topo.ROLLOUT_ROUTING_KEY,
        doc,
        user_id=broker.spec.publisher_user,
    )
    for reader in (agent, operator):
        got = await read_stream(reader, topo.ROLLOUT_STREAM, doc)
        assert got[-1].user_id == broker.spec.publisher_user
    # Its own exchange: a rollout document never lands in the config stream, nor a snapshot
    # in the rollout stream.
    snapshot = marker("after-rollout")
    await publish_snapshot(publisher, snapshot, broker.spec.publisher_user)
    assert doc not in [m.body for m in await read_stream_until(agent, snapshot)]
    later = marker("rollout-doc-2")
    await amqp.publish(
        await publisher.channel(publisher_confirms=True),
        topo.ROLLOUT_EXCHANGE,
        topo.ROLLOUT_ROUTING_KEY,
        later,
    )
    assert snapshot not in [m.body for m in await read_stream(agent, topo.ROLLOUT_STREAM, later)]


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [(topo.ROLLOUT_EXCHANGE, topo.ROLLOUT_ROUTING_KEY), ("", topo.ROLLOUT_STREAM)],
    ids=["erel.rollout", "amq.default"],
)
async def test_agent_and_operator_cannot_write_the_rollout_stream(
    agent: AbstractConnection, operator: AbstractConnection, exchange: str, routing_key: str
) -> None:
    for connection in (agent, operator):
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        error = await expect_refused(
            channel, target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)
        )
        assert f"exchange '{exchange or topo.DEFAULT_EXCHANGE_RESOURCE}'" in error


async def test_agent_rollout_events_reach_the_publisher_and_the_events_stream(
    broker: Setup,
    publisher: AbstractConnection,
    agent: AbstractConnection,
    operator: AbstractConnection,
) -> None:
    host = unique_name("h")
    events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_status(key: str, body: bytes) -> None:
        await events.put((key, body))

    # The publisher's controller follows heartbeats, presence and rollout events.
    patterns = (topo.host_key("*"), topo.presence_key("*"), topo.rollout_key("*"))
    await amqp.consume_status(await publisher.channel(), on_status, pattern=patterns)
    body = marker("rollout-event")
    await amqp.publish(
        await agent.channel(publisher_confirms=True),
        topo.STATUS_EXCHANGE,
        topo.rollout_key(host),
        body,
        user_id=broker.spec.agent_user,
    )
    async with asyncio.timeout(DEADLINE):
        while (await events.get()) != (topo.rollout_key(host), body):
            pass
    got = await read_stream(operator, topo.ROLLOUT_EVENTS_STREAM, body)
    assert got[-1].routing_key == topo.rollout_key(host)
    # Operators may follow rollout events live too.
    await amqp.consume_status(await operator.channel(), on_status, pattern=topo.rollout_key("*"))


async def test_operator_rollout_command_reaches_the_publisher_and_its_reply_comes_back(
    broker: Setup, publisher: AbstractConnection
) -> None:
    """`rollout promote` as the CLI sends it (OpsClient, mandatory `rollout.<group>`) to a
    queue served as the publisher serves it (`serve_commands`, bound to `rollout.*`)."""
    group = unique_name("g")
    queue = f"{topo.PUBLISHER_QUEUE_PREFIX}{unique_name('rollout')}"

    async def on_command(raw: bytes) -> bytes:
        doc = json.loads(raw)
        return commands.reply(
            doc["id"], host_id=topo.PUBLISHER_REPLY_ID, instance="k", ok=True, result=doc
        )

    await amqp.serve_commands(
        await publisher.channel(), queue, (topo.rollout_key("*"),), on_command
    )
    pem, _ = generate_key()
    cmd = commands.new_command(
        "promote",
        None,
        topo.rollout_key(group),
        now=time.time(),
        ttl=30,
        key=load_private_key(pem),
        key_id="ops",
    )
    async with OpsClient([broker.operator_url]) as client:
        await client.send(cmd, 30)
        replies = await client.collect(cmd.id, expected={topo.PUBLISHER_REPLY_ID}, within=DEADLINE)
    [reply] = replies[topo.PUBLISHER_REPLY_ID]
    assert reply["result"]["target"] == topo.rollout_key(group)
    assert reply["result"]["command"] == "promote"


async def test_agent_cannot_send_rollout_commands(agent: AbstractConnection) -> None:
    channel = await agent.channel(publisher_confirms=True)
    control = await channel.get_exchange(topo.CONTROL_EXCHANGE, ensure=False)
    await expect_refused(
        channel, control.publish(aio_pika.Message(b"{}"), routing_key=topo.rollout_key("web"))
    )


@pytest.mark.parametrize("stream", [topo.ROLLOUT_STREAM, topo.ROLLOUT_EVENTS_STREAM])
async def test_operator_cannot_route_into_a_rollout_stream(
    operator: AbstractConnection, stream: str
) -> None:
    channel = await operator.channel()
    queue = await channel.declare_queue(stream, passive=True)
    error = await expect_refused(channel, queue.bind(topo.CONTROL_EXCHANGE, routing_key="#"))
    assert f"queue '{stream}'" in error


async def test_operator_cannot_publish_rollout_events(operator: AbstractConnection) -> None:
    channel = await operator.channel(publisher_confirms=True)
    status = await channel.get_exchange(topo.STATUS_EXCHANGE, ensure=False)
    error = await expect_refused(
        channel,
        status.publish(aio_pika.Message(b"{}"), routing_key=topo.rollout_key("h1")),
    )
    assert "topic 'rollout.h1'" in error
