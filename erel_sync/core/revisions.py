"""What became of a git revision at the publisher, from the records of the `erel.revisions`
stream (`publisher.published` and `publisher.rejected` events, docs/status.md).

Pure. `erel-sync wait -r SHA` reads the stream (`adapters.broker.opsclient`) and asks `locate`: the
first `published` record that carries SHA, as its revision or among the commits it newly
brought, gives the snapshot seq that contains SHA, which every concerned host must reach (a host
at a later seq has SHA too); failing that, a `rejected` record for SHA ends the wait at once with
the publisher's problems. The same records will serve `erel-sync history`, so nothing here is
specific to `wait`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIN_SHA = 7  # as git abbreviates: shorter prefixes collide within a week of commits
_SHA = re.compile(r"[0-9a-f]{7,40}")


def is_sha(text: str) -> bool:
    """A full or abbreviated (>= 7 hex digits) git commit sha, any case."""
    return bool(_SHA.fullmatch(text.lower()))


def names(sha: str, revision: Any) -> bool:
    """Does the (abbreviated) `sha` name the full `revision`?"""
    return isinstance(revision, str) and bool(sha) and revision.lower().startswith(sha.lower())


@dataclass(frozen=True)
class Located:
    state: str  # Published | Rejected | Unknown
    seq: int | None = None  # Published: the first snapshot seq that contains the sha
    revision: str | None = None  # Published: that snapshot's revision (the sha or a later one)
    record: Mapping[str, Any] | None = None


def carries(record: Mapping[str, Any], sha: str) -> bool:
    commits = record.get("commits")
    listed = commits if isinstance(commits, list) else []
    return names(sha, record.get("revision")) or any(names(sha, c) for c in listed)


def locate(records: Iterable[Mapping[str, Any]], sha: str) -> Located:
    """Published (the lowest seq that carries `sha`) over Rejected (the newest rejection of
    `sha` itself; a rejected commit whose content a later valid commit published is in force
    after all) over Unknown (not taken by the publisher yet, or older than the stream keeps)."""
    first: Mapping[str, Any] | None = None
    rejected: Mapping[str, Any] | None = None
    for rec in records:
        kind = rec.get("kind")
        seq = rec.get("seq")
        if kind == "published" and isinstance(seq, int) and carries(rec, sha):
            if first is None or seq < int(first["seq"]):
                first = rec
        elif kind == "rejected" and names(sha, rec.get("revision")):
            rejected = rec
    if first is not None:
        return Located("Published", int(first["seq"]), str(first.get("revision")), first)
    if rejected is not None:
        return Located("Rejected", record=rejected)
    return Located("Unknown")


def problem_lines(record: Mapping[str, Any], limit: int = 50) -> list[str]:
    """A rejection's problems as `file:line:col: $.path: message` (docs/architecture.md)."""
    out = []
    problems = record.get("problems")
    for p in (problems if isinstance(problems, list) else [])[:limit]:
        if not isinstance(p, Mapping):
            continue
        where = str(p.get("file") or "?")
        if p.get("line"):
            where += f":{p.get('line')}:{p.get('col') or 1}"
        path = f" {p['path']}:" if p.get("path") else ""
        out.append(f"{where}:{path} {p.get('message') or ''}".rstrip())
    total = record.get("problems_total")
    if not isinstance(total, int):
        total = len(problems) if isinstance(problems, list) else 0
    shown = len(out)
    if total > shown:
        out.append(f"… and {total - shown} more")
    return out
