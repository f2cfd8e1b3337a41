"""`--log-format`: JSON lines with the stable keys (fields given by the call site, the host
set once, exceptions inside the line), text with or without the time (journald stamps its
own), and an unknown format refused."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from erel_sync.adapters import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, host = root.handlers[:], root.level, logs._CONTEXT.host_id
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._CONTEXT.host_id = host


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_lines_carry_every_stable_key(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info", "json")
    logs.set_host("web-1")
    log = logging.getLogger("erel_sync.agent")
    said = logs.fields("snapshot_stored", seq=3, revision="abc123")
    log.info("web-1: snapshot seq %d stored", 3, extra=said)
    log.debug("not at info")
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.exception("tick crashed")
    first, second = (json.loads(line) for line in lines(capsys))
    assert set(logs.KEYS) <= set(first) and set(logs.KEYS) <= set(second)
    assert first["event"] == "snapshot_stored" and first["seq"] == 3
    assert first["revision"] == "abc123" and first["host_id"] == "web-1"
    assert first["message"] == "web-1: snapshot seq 3 stored" and first["level"] == "info"
    assert first["time"].endswith("Z") and first["release"] is None
    assert second["event"] == "log" and second["level"] == "error"
    assert "ZeroDivisionError: boom" in second["exc_info"]


def test_text_has_no_time_under_journald(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    logs.setup("info", "text")
    logging.getLogger("erel_sync.publisher").warning("publish failed")
    assert lines(capsys) == ["WARNING erel_sync.publisher: publish failed"]
    monkeypatch.delenv("JOURNAL_STREAM")
    logs.setup("info", "text")
    logging.getLogger("erel_sync.publisher").warning("publish failed")
    (line,) = lines(capsys)
    assert line.endswith(" WARNING erel_sync.publisher: publish failed") and line[:4].isdigit()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logs.setup("info", "xml")
