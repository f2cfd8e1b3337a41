"""How the daemons log: `--log-format text` (the default) or `json`, one event per line on
stderr.

JSON lines carry stable keys, present on every line (null when they do not apply): `time`
(UTC, ISO 8601), `level`, `event` (a stable name where the code gives one, such as
`snapshot_stored`; `log` otherwise), `message` (the human text), `logger`, `host_id`,
`release`, `seq`, `revision`, `reason`; an exception adds `exc_info`. Call sites give the
fields with `extra=fields("snapshot_stored", seq=..., revision=...)`; the agent's host id is
set once for the process (`set_host`). python-json-logger is imported only for `json`.

Under systemd (`JOURNAL_STREAM` set) the text format leaves the time out: journald stamps
every line itself. JSON keeps its `time`: it is a field for whoever parses the line.
Nothing secret is logged: secrets are only ever decrypted into the files a node reads
(docs/secrets.md), and log lines carry names, seqs and reasons.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

KEYS = (
    "time",
    "level",
    "event",
    "message",
    "logger",
    "host_id",
    "release",
    "seq",
    "revision",
    "reason",
)
FIELDS = ("event", "host_id", "release", "seq", "revision", "reason")
FORMATS = ("text", "json")
QUIET = ("aio_pika", "aiormq", "apscheduler")  # their INFO is per frame or per job


def fields(event: str, **values: Any) -> dict[str, Any]:
    """The `extra` of a log call: a stable event name and the keys it concerns."""
    return {"event": event, **values}


class _Context(logging.Filter):
    """Gives every record the stable keys it lacks (the process's host id among them)."""

    host_id: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        for key in FIELDS:
            if not hasattr(record, key):
                setattr(record, key, self.host_id if key == "host_id" else None)
        if record.event is None:  # type: ignore[attr-defined]
            record.event = "log"
        return True


_CONTEXT = _Context()


def set_host(host_id: str) -> None:
    """Every line of this process says which host it is about (the agent's host id)."""
    _CONTEXT.host_id = host_id


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415

    class Formatter(JsonFormatter):
        def add_fields(
            self, log_data: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]
        ) -> None:
            log_data["time"] = (
                datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            ).replace("+00:00", "Z")
            log_data["level"] = record.levelname.lower()
            log_data["message"] = record.getMessage()
            log_data["logger"] = record.name
            for key in FIELDS:
                log_data[key] = getattr(record, key, None)
            if record.exc_info:
                log_data["exc_info"] = self.formatException(record.exc_info)

    # Only the keys above: not every attribute of the record, nor the printf arguments.
    return Formatter(reserved_attrs=[*logging.LogRecord("", 0, "", 0, "", (), None).__dict__])


def setup(level: str, fmt: str = "text") -> None:
    """The root logger on stderr in `fmt` at `level` (a name: debug, info, warning, error)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CONTEXT)
    if fmt == "json":
        handler.setFormatter(_json_formatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
