"""Permissions made by `erel-sync broker setup` (`adapters.brokersetup`) on a real RabbitMQ 3.10.

One vhost with one publisher and one agent user is set up per module (rabbitmqctl is slow); each
test uses its own routing keys and markers. What must hold (docs/broker.md):
- the publisher publishes confirmed snapshots to `erel.config`, which land in the stream with the
  broker-validated `user_id`;
- an agent can neither publish to `erel.config` nor through the default exchange (`amq.default`),
  nor re-declare or delete the stream, nor read `erel.status`: ACCESS_REFUSED closes the channel;
- an agent can read the stream from `first`, send heartbeats, bind its own queues to
  `erel.control`, and ask `state.request` with direct reply-to, answered by the publisher.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from typer.testing import CliRunner

from erel_sync.adapters import topology as topo
from erel_sync.adapters.brokersetup import (
    AGENT_PERMISSIONS,
    PUBLISHER_PERMISSIONS,
    BrokerSetupSpec,
    observe,
    plan_ctl,
    setup_broker,
)
from erel_sync.adapters.rabbitnode import SERVER_BIN_DIR
from erel_sync.cli.broker import app as broker_app
from tests.rabbit import Rabbit, unique_name

DEADLINE = 10.0


@dataclass(frozen=True)
class Setup:
    spec: BrokerSetupSpec
    publisher_url: str
    agent_url: str
    log: tuple[str, ...]


@pytest.fixture(scope="module")
def broker(rabbit: Rabbit) -> Iterator[Setup]:
    spec = BrokerSetupSpec(
        vhost=unique_name("perm"),
        publisher_user=unique_name("pub"),
        publisher_password=uuid.uuid4().hex,
        agent_user=unique_name("agent"),
        agent_password=uuid.uuid4().hex,
    )
    log: list[str] = []
    setup_broker(spec, rabbit.ctl, rabbit.url, echo=log.append)
    try:
        yield Setup(
            spec,
            rabbit.url_for(spec.vhost, spec.publisher_user, spec.publisher_password),
            rabbit.url_for(spec.vhost, spec.agent_user, spec.agent_password),
            tuple(log),
        )
    finally:
        rabbit.delete_vhost(spec.vhost)
        rabbit.delete_user(spec.publisher_user)
        rabbit.delete_user(spec.agent_user)


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
    p, a = PUBLISHER_PERMISSIONS, AGENT_PERMISSIONS
    assert granted == {
        broker.spec.publisher_user: (p.configure, p.write, p.read),
        broker.spec.agent_user: (a.configure, a.write, a.read),
    }
    assert any("add_vhost" in line for line in broker.log)


def test_second_run_through_the_cli_only_resets_passwords_and_permissions(
    broker: Setup, rabbit: Rabbit
) -> None:
    steps = plan_ctl(broker.spec, observe(rabbit.ctl))
    assert [s.args[0] for s in steps] == [
        "change_password",
        "set_permissions",
        "change_password",
        "set_permissions",
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
        },
    )
    assert result.exit_code == 0, result.output
    assert "skip vhost" in result.output
    assert "change_password" in result.output
    assert "add_user" not in result.output
    assert spec.publisher_password not in result.output
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
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "rabbitmqctl -n rabbit@broker add_vhost erel" in lines
    a = AGENT_PERMISSIONS
    assert (
        f"rabbitmqctl -n rabbit@broker set_permissions -p erel erel-agent "
        f"'{a.configure}' '{a.write}' '{a.read}'"
    ) in lines
    assert "s3cret" not in result.output
    assert '"${EREL_AGENT_PASSWORD:?}"' in result.output


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


async def test_agent_state_request_gets_a_direct_reply_from_the_publisher(
    broker: Setup, publisher: AbstractConnection, agent: AbstractConnection
) -> None:
    # The publisher answers state.request on a server-named queue bound to erel.sync.
    serve = await publisher.channel()
    requests = await serve.declare_queue("", exclusive=True)
    await requests.bind(topo.SYNC_EXCHANGE, routing_key=topo.STATE_REQUEST_KEY)

    async def answer(message: AbstractIncomingMessage) -> None:
        async with message.process():
            assert message.reply_to is not None
            await serve.default_exchange.publish(
                aio_pika.Message(b"state:" + message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to,
                mandatory=False,  # 3.10 returns mandatory publishes to direct reply-to
            )

    await requests.consume(answer)

    channel = await agent.channel()
    replies = await channel.get_queue(topo.DIRECT_REPLY_TO, ensure=False)
    reply: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_reply(message: AbstractIncomingMessage) -> None:
        if not reply.done():
            reply.set_result(message)

    await replies.consume(on_reply, no_ack=True)  # direct reply-to needs a no-ack consumer
    sync = await channel.get_exchange(topo.SYNC_EXCHANGE, ensure=True)
    correlation = uuid.uuid4().hex
    await sync.publish(
        aio_pika.Message(b"give", reply_to=topo.DIRECT_REPLY_TO, correlation_id=correlation),
        routing_key=topo.STATE_REQUEST_KEY,
    )
    async with asyncio.timeout(DEADLINE):
        got = await reply
    assert got.body == b"state:give"
    assert got.correlation_id == correlation


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
