"""What the CLI shows of rollouts: rows for `status` and `rollout status`, and the halt that
ends `erel-sync wait`.

Pure: reads rollout documents as JSON (the publisher's, from the `erel.rollout` stream), which
may come from an older or newer publisher, so a missing key reads as empty rather than failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLLOUT_HEADERS = ["GROUP", "SEQ", "REVISION", "PHASE", "DONE", "IN PROGRESS", "WAITING", "FAILED"]


def newest(docs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The document with the highest version (a stream may hold a few)."""
    valid = [d for d in docs if isinstance(d.get("version"), int)]
    return max(valid, key=lambda d: int(d["version"]), default=None)


def groups(doc: Mapping[str, Any] | None, group: str | None = None) -> dict[str, Any]:
    found = (doc or {}).get("groups") or {}
    if not isinstance(found, Mapping):
        return {}
    return {
        n: g
        for n, g in sorted(found.items())
        if isinstance(g, Mapping) and (group is None or n == group)
    }


def in_progress(g: Mapping[str, Any]) -> list[str]:
    """Hosts holding a place: granted, not done, not failed."""
    done, failed = set(g.get("done") or ()), set(g.get("failed") or {})
    return sorted(h for h in (g.get("granted") or {}) if h not in done and h not in failed)


def rows(doc: Mapping[str, Any] | None, group: str | None = None) -> list[list[str]]:
    out = []
    for name, g in groups(doc, group).items():
        failed = g.get("failed") or {}
        first = next(iter(sorted(failed.items())), None)
        more = f" (+{len(failed) - 1})" if len(failed) > 1 else ""
        out.append(
            [
                name,
                str(g.get("seq", "")),
                str(g.get("revision") or "")[:12],
                str(g.get("phase", "")),
                f"{len(g.get('done') or ())}/{len(g.get('order') or ())}",
                ", ".join(in_progress(g)) or "-",
                str(len(g.get("waiting") or ())),
                f"{first[0]}: {first[1]}"[:80] + more if first else "-",
            ]
        )
    return out


def halted(
    doc: Mapping[str, Any] | None, *, seq: int | None, group: str | None = None
) -> dict[str, dict[str, str]]:
    """Groups whose rollout of snapshot `seq` (or a later one) is Halted: group -> the failed
    hosts and why. `wait` ends on it at once: nothing more will happen without an operator."""
    if seq is None:
        return {}
    out = {}
    for name, g in groups(doc, group).items():
        if g.get("phase") == "Halted" and int(g.get("seq") or 0) >= seq:
            out[name] = {str(h): str(r) for h, r in (g.get("failed") or {}).items()}
    return out
