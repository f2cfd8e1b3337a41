"""The broker adapter's errors: the only exceptions that leave `adapters.broker`.

Every aio-pika/aiormq failure is wrapped here (`wrapped`, `raise ... from`), classified by what
the caller should do next, the way kopf's client errors are: `transient` errors go away by
themselves (retry later: the broker is down, a connection was lost, a stream is being
restarted), the others need someone to change something (permissions, a stream declared with
other arguments). Daemons catch `BrokerError` and read `transient`; they never see the library.
Used by `session`, `messages`, `setup` and `opsclient`, and re-exported by `messages` for the
CLI's older imports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aio_pika
import aiormq


class BrokerError(Exception):
    """The broker refused or could not be reached. `transient`: retrying later may succeed
    without anyone changing anything (the default for a failure we cannot classify)."""

    transient: bool = True


class ConnectionLost(BrokerError):
    """The connection or a channel died under a call (its pending calls were cancelled)."""


class PublishFailed(BrokerError):
    """A publish was nacked, returned as unroutable, or not confirmed in time."""


class NotFound(BrokerError):
    """An exchange, queue or stream does not exist, or the broker reports it down (a stream
    after a crash). Transient for a daemon: the publisher declares what is missing."""


class AccessRefused(BrokerError):
    """The broker refused the user: a wrong password, a vhost that does not exist or is not
    allowed, an operation outside the user's permissions. Someone must fix the setup."""

    transient = False


class PreconditionFailed(BrokerError):
    """Something exists with other settings (a stream declared with other arguments)."""

    transient = False


# What aio-pika and aiormq raise when a connection or channel fails (plus a confirm timeout).
LIBRARY_ERRORS = (TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS)


def cancelled_by_us() -> bool:
    """Whether a CancelledError seen now is a cancellation of the current task (shutdown, a
    timeout, a supervisor), rather than aiormq rejecting the futures of a dead connection with
    CancelledError (its default close reason), which does not touch the awaiting task."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def first_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(a) for a in e.args if a) if e.args else str(e)
    return (text.strip().splitlines() or [type(e).__name__])[0][:limit]


def classify(what: str, e: BaseException, default: type[BrokerError] = BrokerError) -> BrokerError:
    """The adapter's error for a library failure of the step `what` (bounded, one line)."""
    if isinstance(e, aiormq.exceptions.ChannelNotFoundEntity):
        return NotFound(f"{what}: {first_line(e)}")
    if isinstance(
        e, aiormq.exceptions.ChannelAccessRefused | aiormq.exceptions.ProbableAuthenticationError
    ):
        return AccessRefused(f"{what}: access refused: {first_line(e)}")
    if isinstance(e, aiormq.exceptions.ChannelPreconditionFailed):
        return PreconditionFailed(f"{what}: {first_line(e)}")
    if isinstance(e, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(e):
        # RabbitMQ answers an open of a vhost that does not exist, or that the user has no
        # permissions in, with Connection.Close, which aiormq reports as an unexpected frame.
        return AccessRefused(
            f"{what}: the broker refused the vhost: no such vhost, or no permissions there"
        )
    return default(f"{what}: {type(e).__name__}: {first_line(e, 200)}")


@contextlib.contextmanager
def wrapped(what: str, error: type[BrokerError] = BrokerError) -> Iterator[None]:
    """Library failures of a broker call as the adapter's errors (`error` when nothing more
    precise applies); a CancelledError that comes from a dead connection too (it would
    otherwise end the caller's loop as if it had been cancelled). A real cancellation of the
    calling task stays a CancelledError."""
    try:
        yield
    except asyncio.CancelledError as e:
        if cancelled_by_us():
            raise
        lost = error if error is not BrokerError else ConnectionLost
        raise lost(f"{what}: connection lost (its pending calls were cancelled)") from e
    except LIBRARY_ERRORS as e:
        raise classify(what, e, error) from e
