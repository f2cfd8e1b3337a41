"""The publisher's revision events: `publisher.published` and `publisher.rejected` documents.

Built by `publisher.daemon` for each head it takes, published on `erel.status`, kept by the
`erel.revisions` stream, and read back by `erel-sync wait` (`core.revisions`, docs/status.md),
which must learn from them which snapshot carries a commit, or why a revision was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from erel_sync.adapters import logs
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.clock import utc_now
from erel_sync.adapters.git.gitwatch import commit_summary, new_commits
from erel_sync.model.problems import Problem

EVENT_FORMAT = 1
EVENT_COMMITS = 256  # at most this many shas in a `published` event (commits_truncated says so)
EVENT_PROBLEMS = 200  # at most this many problems in a `rejected` event (problems_total: all)
EVENT_KEYS = {"published": topo.PUBLISHER_PUBLISHED_KEY, "rejected": topo.PUBLISHER_REJECTED_KEY}


def published_event(repo: Any, seq: int, head: str, previous: str | None) -> dict[str, Any]:
    """Which seq carries `head` and which commits it newly brings, so that `erel-sync wait -r
    SHA` finds the snapshot that contains SHA."""
    commits, truncated = new_commits(repo, head, previous, EVENT_COMMITS)
    author, subject = commit_summary(repo, head)
    return {
        "format": EVENT_FORMAT,
        "kind": "published",
        "seq": seq,
        "revision": head,
        "previous_revision": previous,
        "commits": commits,
        "commits_truncated": truncated,
        "author": author,
        "subject": subject,
        "time": utc_now(),
    }


def rejected_event(
    repo: Any,
    head: str,
    problems: Sequence[Problem],
    *,
    reason: str,
    published_revision: str | None,
    published_seq: int,
) -> dict[str, Any]:
    """Why `head` was refused (every problem, bounded) and what stays current meanwhile."""
    author, subject = commit_summary(repo, head)
    return {
        "format": EVENT_FORMAT,
        "kind": "rejected",
        "reason": reason,
        "revision": head,
        "published_revision": published_revision,
        "published_seq": published_seq,
        "problems": [p.to_json() for p in problems[:EVENT_PROBLEMS]],
        "problems_total": len(problems),
        "author": author,
        "subject": subject,
        "time": utc_now(),
    }


def log_published(log: logging.Logger, head: str, seq: int) -> None:
    said = logs.fields("revision_published", seq=seq, revision=head)
    log.info("revision %s valid: snapshot seq %d", head[:12], seq, extra=said)


def log_rejected(log: logging.Logger, head: str, reason: str, problems: list[Problem]) -> None:
    """One line for the rejection, one per problem (each `file:line: $.path: message`)."""
    said = logs.fields("revision_rejected", revision=head, reason=reason)
    log.error(
        "revision %s rejected (%s): %d problem(s)", head[:12], reason, len(problems), extra=said
    )
    for p in problems:
        log.error("  %s", p, extra=said)
