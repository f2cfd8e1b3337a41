"""`erel-sync web`: one read-only page of the fleet, updated live.

The server follows what the CLI follows (operator credentials; adapters.broker.opsclient):
every heartbeat, the publisher's revision events and the rollout documents, folds them into
`core.fleetview.FleetView`, and serves
- `GET /`: the page (index.html beside this module: plain HTML, CSS and JavaScript, no build
  step, no asset from the internet);
- `GET /api/state`: the page's data as JSON;
- `GET /events`: server-sent events, the state again whenever it changed (at most every
  `PUSH_EVERY` seconds), a comment every `KEEPALIVE` seconds so proxies keep the stream.
A broker loss is retried with backoff; the page shows the last state and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.adapters.broker.session import keep_session
from erel_sync.core.fleetview import FleetView

log = logging.getLogger("erel_sync.web")

PUSH_EVERY = 0.5
KEEPALIVE = 15.0
FOLLOW_RETRY = 2.0  # a stream not there yet (the publisher never ran) is looked for again


class WebView:
    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.fleet = FleetView()
        self.connected = False
        self.page = resources.files(__package__).joinpath("index.html").read_bytes()

    def state(self) -> dict[str, Any]:
        return {**self.fleet.state(time.time()), "broker_connected": self.connected}

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow the broker until `stop`; a lost connection is opened again (keep_session)."""

        def failed(e: Exception, delay: float) -> None:
            self.connected = False
            self.fleet.version += 1
            log.warning("broker: %s; again in %.1fs", e, delay)

        await keep_session(self._session, stop, failed)

    async def _session(self, stop: asyncio.Event) -> None:
        async with OpsClient(self.urls) as client:
            absent = await client.follow_publisher(self.fleet.on_revision, self.fleet.on_rollout)
            await client.follow_heartbeats(self.fleet.on_heartbeat)
            self.connected = True
            self.fleet.version += 1
            await client.hold(stop, every=FOLLOW_RETRY, absent=absent)

    async def index(self, request: web.Request) -> web.Response:
        del request
        return web.Response(body=self.page, content_type="text/html", charset="utf-8")

    async def api_state(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(self.state(), headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await response.prepare(request)
        sent, quiet = -1, time.monotonic()
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                version = self.fleet.version
                if version != sent:
                    data = json.dumps(self.state(), separators=(",", ":"))
                    await response.write(f"event: state\ndata: {data}\n\n".encode())
                    sent, quiet = version, time.monotonic()
                elif time.monotonic() - quiet > KEEPALIVE:
                    await response.write(b": keepalive\n\n")
                    quiet = time.monotonic()
                await asyncio.sleep(PUSH_EVERY)  # the page's refresh rate, not a wait on a result
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/api/state", self.api_state)
        app.router.add_get("/events", self.events)
        return app


async def serve(urls: Sequence[str], host: str, port: int, stop: asyncio.Event) -> None:
    view = WebView(urls)
    runner = web.AppRunner(view.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("erel-sync web on http://%s:%d/", host, port)
    follow = asyncio.create_task(view.follow(stop))
    try:
        await stop.wait()
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
        await runner.cleanup()
