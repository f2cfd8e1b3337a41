"""Render a RevisionPlan as text (terminal), JSON (tools) or Markdown (a pull-request comment).

Pure: returns strings. Called by `erel-sync plan`. With an inventory, each changed group's
rollout waves are shown: canaries, then batches of max_unavailable, in host-id order.
"""

from __future__ import annotations

import json
from typing import Any

from erel_sync.core.matching import GroupMatch
from erel_sync.core.revdiff import Change, GroupWaves, HostPlan, RevisionPlan
from erel_sync.model.problems import Problem


def _group_label(m: GroupMatch) -> str:
    if m.group:
        return m.group
    if m.candidates:
        return f"ambiguous ({', '.join(m.candidates)})"
    return "unassigned"


def _group_cell(h: HostPlan) -> str:
    if not h.moved:
        text = _group_label(h.after)
    else:
        text = f"{_group_label(h.before)} -> {_group_label(h.after)}"
        if not h.after.group:
            text += " (keeps what runs; nothing is stopped)"
    return text + (" [suspended: not applied]" if h.suspended and h.changes else "")


def _host_line(h: HostPlan) -> str:
    return f"{h.host_id}: {_group_cell(h)}"


def waves_text(w: GroupWaves) -> str:
    """`canary [web-1]; wave 1 [web-2, web-3]; wave 2 [web-4]`."""
    parts = [f"canary [{', '.join(w.canaries)}]"] if w.canaries else []
    if w.pause_after_canary:
        parts.append("pause until `rollout promote`")
    parts += [f"wave {i} [{', '.join(b)}]" for i, b in enumerate(w.batches, 1)]
    return "; ".join(parts) + f" (max_unavailable {w.max_unavailable})"


def _rolling(plan: RevisionPlan) -> dict[str, GroupWaves]:
    """The groups whose hosts have something to change: those are rolled out."""
    touched = {h.after.group for h in plan.hosts if h.changes}
    return {g: w for g, w in plan.waves.items() if g in touched}


def _short(rev: str) -> str:
    return rev[:12] if rev else "(none)"


def render_text(plan: RevisionPlan) -> str:
    lines = [f"plan {_short(plan.base_revision)} -> {_short(plan.head_revision)}"]
    if not plan.changed:
        lines.append("no changes")
        return "\n".join(lines) + "\n"
    for name, changes in plan.groups.items():
        if not changes:
            continue
        lines.append(f"group {name}:")
        lines += [f"  {c.describe()}" for c in changes]
    touched = [h for h in plan.hosts if h.changes or h.moved]
    if touched:
        lines.append("hosts:")
        for h in touched:
            lines.append(f"  {_host_line(h)}")
            lines += [f"    {c.describe()}" for c in h.changes]
    if rolling := _rolling(plan):
        lines.append("rollout:")
        lines += [f"  {g}: {waves_text(w)}" for g, w in rolling.items()]
    return "\n".join(lines) + "\n"


def _change_json(c: Change) -> dict[str, Any]:
    return {
        "kind": c.kind.value,
        "release": c.release,
        "before": c.before,
        "after": c.after,
        "detail": c.detail,
    }


def _match_json(m: GroupMatch) -> dict[str, Any]:
    return {"group": m.group, "how": m.how, "candidates": list(m.candidates)}


def plan_to_json(plan: RevisionPlan) -> dict[str, Any]:
    return {
        "base": plan.base_revision or None,
        "head": plan.head_revision or None,
        "changed": plan.changed,
        "groups": {n: [_change_json(c) for c in cs] for n, cs in plan.groups.items()},
        "hosts": [
            {
                "host": h.host_id,
                "before": _match_json(h.before),
                "after": _match_json(h.after),
                "moved": h.moved,
                "suspended": h.suspended,
                "changes": [_change_json(c) for c in h.changes],
            }
            for h in plan.hosts
        ]
        if plan.inventory_given
        else None,
        "rollout": {
            g: {
                "canaries": list(w.canaries),
                "waves": [list(b) for b in w.batches],
                "max_unavailable": w.max_unavailable,
                "pause_after_canary": w.pause_after_canary,
                "changes": g in _rolling(plan),
            }
            for g, w in plan.waves.items()
        }
        if plan.inventory_given
        else None,
    }


def render_json(plan: RevisionPlan) -> str:
    return json.dumps(plan_to_json(plan), indent=2, sort_keys=True) + "\n"


def render_markdown(plan: RevisionPlan) -> str:
    out = [
        f"### erel-sync plan `{_short(plan.base_revision)}` → `{_short(plan.head_revision)}`",
        "",
    ]
    if not plan.changed:
        return "\n".join([*out, "No changes to the desired state.", ""])
    out += ["| group | change |", "|---|---|"]
    for name, changes in plan.groups.items():
        for c in changes:
            out.append(f"| `{name}` | {_md(c.describe())} |")
    touched = [h for h in plan.hosts if h.changes or h.moved]
    if touched:
        out += [
            "",
            f"<details><summary>Per host ({len(touched)} affected)</summary>",
            "",
            "| host | group | changes |",
            "|---|---|---|",
        ]
        for h in touched:
            group = _md(_group_cell(h))
            cells = "<br>".join(_md(c.describe()) for c in h.changes) or "—"
            out.append(f"| `{h.host_id}` | {group} | {cells} |")
        out += ["", "</details>"]
    if rolling := _rolling(plan):
        out += ["", "| group | rollout waves |", "|---|---|"]
        out += [f"| `{g}` | {_md(waves_text(w))} |" for g, w in rolling.items()]
    return "\n".join(out) + "\n"


def render_problems_markdown(problems: list[Problem], head: str) -> str:
    out = [f"### erel-sync plan: revision `{_short(head)}` is invalid", "", "```"]
    out += [str(p) for p in problems]
    return "\n".join([*out, "```", ""])


def _md(text: str) -> str:
    return text.replace("|", "\\|")
