"""The supervisor of the daemons' long-lived tasks, and how the broker adapter tells a dead
connection's CancelledError from a real cancellation. Pure asyncio, no sockets: the tasks are
small coroutines that raise, return or get cancelled the ways the daemons' loops can."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import typer

from erel_sync.adapters.broker import errors as broker
from erel_sync.adapters.broker.session import keep_session
from erel_sync.adapters.supervisor import Supervisor, TaskFailed
from erel_sync.cli.daemons import run_daemon
from tests.waiting import eventually

FAST = {"backoff": (0.01, 0.02)}


def dead_connection_future() -> asyncio.Future[None]:
    """What aiormq hands to whoever awaits a call of a connection that died: a future rejected
    with CancelledError, while the awaiting task itself was never cancelled."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_exception, asyncio.CancelledError())
    return future


def supervisor(counters: Counter[str], **kw: object) -> tuple[Supervisor, asyncio.Event]:
    stopping = asyncio.Event()
    return Supervisor("test", counters, stopping, **{**FAST, **kw}), stopping  # type: ignore[arg-type]


@pytest.mark.parametrize("ending", ["raises", "returns", "cancelled-from-inside"])
async def test_a_task_that_ends_is_logged_counted_and_restarted(
    ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    counters: Counter[str] = Counter()
    sup, stopping = supervisor(counters)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            if ending == "raises":
                raise RuntimeError("boom")
            if ending == "cancelled-from-inside":
                await dead_connection_future()
            return
        await asyncio.Event().wait()  # healthy from the third run on

    sup.start("heartbeat", loop)
    await eventually(lambda: runs == 3)
    assert counters["task_restarts.heartbeat"] == 2
    assert sup.running("heartbeat")
    assert "task heartbeat ended" in caplog.text
    stopping.set()
    await sup.close()
    task = sup.task("heartbeat")
    assert task is not None and task.done()


async def test_until_done_ends_quietly_on_return_but_not_on_error() -> None:
    counters: Counter[str] = Counter()
    sup, _ = supervisor(counters)
    runs = 0

    async def retry() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise OSError("disk full")

    sup.start("store-retry", retry, until_done=True)
    await eventually(lambda: runs == 2 and not sup.running("store-retry"))
    assert counters["task_restarts.store-retry"] == 1
    sup.start("store-retry", retry, until_done=True)  # started again when needed
    await eventually(lambda: runs == 3 and not sup.running("store-retry"))
    assert counters["task_restarts.store-retry"] == 1
    await sup.close()


async def test_budget_exhausted_raises_task_failed_and_shuts_down_cleanly() -> None:
    counters: Counter[str] = Counter()
    sup, _ = supervisor(counters, budget=3, window=60.0)
    healthy_cancelled = asyncio.Event()

    async def crashing() -> None:
        raise ValueError("always")

    async def healthy() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            healthy_cancelled.set()

    sup.start("watch", crashing)
    sup.start("republish", healthy)
    with pytest.raises(TaskFailed) as failed:
        async with asyncio.timeout(5):
            await sup.watch(asyncio.Event())
    assert failed.value.reason == "RestartBudgetExhausted"
    assert failed.value.name == "watch"
    assert "ValueError: always" in str(failed.value)
    assert counters["task_restarts.watch"] == 3
    await sup.close()
    assert healthy_cancelled.is_set()


async def test_shutdown_is_not_a_fault_and_lets_the_named_task_finish() -> None:
    counters: Counter[str] = Counter()
    sup, stopping = supervisor(counters)
    finished, step_done = asyncio.Event(), asyncio.Event()

    async def reconcile() -> None:
        await stopping.wait()
        await step_done.wait()  # a step of a tick still running when the shutdown begins
        finished.set()

    async def forever() -> None:
        await asyncio.Event().wait()

    sup.start("reconcile", reconcile)
    sup.start("heartbeat", forever)
    sup.start("broker", forever)
    stop = asyncio.Event()
    stop.set()
    await sup.watch(stop)  # returns: stop was asked for
    stopping.set()
    closing = asyncio.create_task(sup.close(finish={"reconcile": 5.0, "broker": 0.01}))
    broker_task = sup.task("broker")
    assert broker_task is not None
    await eventually(broker_task.cancelled, 5, what="the broker task's grace is over")
    assert not closing.done()  # still waiting for the step of the tick
    step_done.set()
    await closing
    assert finished.is_set()
    for name in ("heartbeat", "broker"):  # at once / once its time was up
        task = sup.task(name)
        assert task is not None and task.cancelled()
    assert not counters  # nothing counted as a restart


async def test_a_dead_connections_cancelled_error_becomes_a_broker_error() -> None:
    with (
        pytest.raises(broker.BrokerError, match="connection lost"),
        broker.wrapped("erel.status/host.h"),
    ):
        await dead_connection_future()
    with pytest.raises(broker.PublishFailed), broker.wrapped("erel.config/", broker.PublishFailed):
        raise ConnectionResetError("reset by peer")


async def test_a_real_cancellation_stays_a_cancellation() -> None:
    entered = asyncio.Event()

    async def publishing() -> None:
        with broker.wrapped("erel.status/host.h"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(publishing())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_keep_session_rebuilds_a_session_ended_by_a_dead_connection() -> None:
    stop = asyncio.Event()
    failures: list[Exception] = []
    sessions = 0

    async def session(_stop: asyncio.Event) -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            await dead_connection_future()
        stop.set()

    await asyncio.wait_for(keep_session(session, stop, lambda e, _d: failures.append(e)), timeout=5)
    assert sessions == 2
    assert len(failures) == 1 and isinstance(failures[0], broker.BrokerError)


def test_the_cli_exits_4_when_a_task_keeps_ending_and_0_on_sigterm() -> None:
    def daemon(crash: bool) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def main(stop: asyncio.Event) -> None:
            halt = asyncio.Event()
            sup = Supervisor("daemon", Counter(), halt, budget=2, backoff=(0.01, 0.01))

            async def loop() -> None:
                if crash:
                    raise RuntimeError("boom")
                os.kill(os.getpid(), signal.SIGTERM)  # the handler sets `stop`
                await asyncio.Event().wait()

            sup.start("loop", loop)
            try:
                async with asyncio.timeout(10):  # a bound for this test, should all else fail
                    await sup.watch(stop)
            finally:
                halt.set()
                await sup.close()

        return main

    with pytest.raises(typer.Exit) as exited:
        run_daemon(daemon(crash=True))
    assert exited.value.exit_code == 4
    run_daemon(daemon(crash=False))  # returns: exit 0
