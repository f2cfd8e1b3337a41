"""`erel-sync web` started before the publisher ever ran: the vhost has erel-sync's exchanges
(an agent or `broker setup` made them) but not yet the publisher's streams. The page must
pick the streams up once they exist, not show "no revision published yet" until it happens
to reconnect (CI saw exactly that when the page came up in the publisher's first second).

The server's own follower (`WebView.follow`) against the session RabbitMQ node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aio_pika

from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.web.server import WebView
from tests.waiting import eventually


async def test_the_page_follows_streams_the_publisher_creates_after_it_started(vhost: str) -> None:
    connection = await aio_pika.connect(vhost)
    view = WebView([vhost])
    stop = asyncio.Event()
    follow = asyncio.create_task(view.follow(stop))
    try:
        channel = await connection.channel()
        await topo.declare_exchanges(channel)
        await eventually(lambda: view.connected, 30, what="the page's broker session")
        assert view.state()["current"] is None

        # What the publisher does at its first start: the streams, then the first event.
        await topo.declare_queue(channel, topo.REVISIONS_QUEUE)
        status = await channel.get_exchange(topo.STATUS_EXCHANGE)
        event = {"kind": "published", "seq": 1, "revision": "ab" * 20, "subject": "first"}
        await status.publish(
            aio_pika.Message(json.dumps(event).encode()), topo.PUBLISHER_PUBLISHED_KEY
        )

        current = await eventually(
            lambda: view.state()["current"], 30, what="the published revision on the page"
        )
        assert current["seq"] == 1 and current["subject"] == "first"
        assert view.connected and not follow.done()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(follow, 10)
        await connection.close()
