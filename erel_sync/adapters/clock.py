"""The wall clock, read in one place: the daemons stamp reports and events with it.

Pure code never reads it; it takes `now` as an argument (the planner, the backoff, the
liveness rules), so tests pass a fixed time.
"""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    """Now, as the RFC 3339 UTC text every report and event carries (microseconds, `Z`)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
