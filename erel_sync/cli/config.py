"""`erel-sync validate` and `erel-sync plan`: the two pull-request review commands.

Both are offline: they read a directory or git revisions through `adapters.git.configsource`, run
the pure validator and revision diff, and print text, JSON or Markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from erel_sync.cli.common import Exit, PlanFormat, TextJson, fail
from erel_sync.core.inventory import parse_inventory
from erel_sync.core.plan_render import (
    render_json,
    render_markdown,
    render_problems_markdown,
    render_text,
)
from erel_sync.core.revdiff import plan_revisions
from erel_sync.model.canonical import state_digest
from erel_sync.model.problems import ConfigError, Problem


def validate(
    path: Annotated[
        Path, typer.Argument(help="Config directory, or git repository with --rev.")
    ] = Path("."),
    rev: Annotated[
        str | None,
        typer.Option("--rev", help="Validate this git revision instead of the working tree."),
    ] = None,
    output: Annotated[
        TextJson, typer.Option("-o", "--output", help="Output format.")
    ] = TextJson.text,
) -> None:
    """Validate a whole config revision: YAML, JSON Schema and cross-references.

    Exit 0 when valid, 2 when not (every problem is listed as file:line:col).

    Examples:
      erel-sync validate sample-repo
      erel-sync validate . --rev origin/main -o json
    """
    # Imported here: GitPython costs ~10 MiB that `erel-sync agent` never needs.
    from erel_sync.adapters.git.configsource import (  # noqa: PLC0415
        SourceError,
        open_repo,
        read_directory,
        read_revision,
    )

    try:
        if rev:
            with open_repo(path) as r:
                revision = read_revision(r, rev)
        else:
            revision = read_directory(path)
    except SourceError as e:
        fail(str(e), Exit.INVALID)
    result = revision.validate()
    if output is TextJson.json:
        doc = {
            "valid": result.ok,
            "revision": revision.sha or None,
            "digest": state_digest(result.state) if result.state else None,
            "files": result.files,
            "documents": result.documents,
            "notifications": sorted(result.notifications),
            "problems": [p.to_json() for p in result.problems],
            "warnings": [p.to_json() for p in result.warnings],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif result.ok:
        assert result.state is not None
        s = result.state
        for w in result.warnings:
            sys.stdout.write(f"warning: {w}\n")
        notes = len(result.notifications)
        also = f", {notes} notification{'s' if notes != 1 else ''}" if notes else ""
        sys.stdout.write(
            f"valid: {len(s.releases)} releases, {len(s.groups)} groups{also} in {result.files} "
            f"files (digest {state_digest(s)[:16]})\n"
        )
    else:
        for p in result.problems:
            sys.stdout.write(f"{p}\n")
        sys.stdout.write(f"invalid: {len(result.problems)} problem(s)\n")
    raise typer.Exit(int(Exit.OK if result.ok else Exit.INVALID))


def plan(
    repo: Annotated[Path, typer.Option("--repo", help="The config git repository.")] = Path("."),
    base: Annotated[
        str, typer.Option("--base", help="Base revision (e.g. the PR's target).")
    ] = "HEAD~1",
    head: Annotated[
        str, typer.Option("--head", help="Head revision (e.g. the PR's branch).")
    ] = "HEAD",
    hosts: Annotated[
        Path | None,
        typer.Option(
            "--hosts",
            help="Host inventory (YAML: hosts: [{id, labels}]) for a per-host plan and each "
            "group's rollout waves.",
        ),
    ] = None,
    output: Annotated[
        PlanFormat, typer.Option("-o", "--output", help="Output format.")
    ] = PlanFormat.text,
) -> None:
    """Show what HEAD changes against BASE, per group and (with --hosts) per host, with the
    rollout waves of each changed group (canaries, then batches of max_unavailable, by host id).

    Exit 0 no change, 1 changes, 2 head invalid (errors listed). Offline: reads git only.

    Examples:
      erel-sync plan --repo . --base origin/main --head HEAD
      erel-sync plan --base main --head feature --hosts .erel/hosts.yaml -o markdown
    """
    from erel_sync.adapters.git.configsource import (  # noqa: PLC0415
        SourceError,
        open_repo,
        read_revision,
    )

    try:
        with open_repo(repo) as r:
            head_rev = read_revision(r, head)
            base_rev = read_revision(r, base)
    except SourceError as e:
        fail(str(e), Exit.INVALID)
    inventory = None
    if hosts is not None:
        try:
            inventory = parse_inventory(str(hosts), hosts.read_bytes())
        except OSError as e:
            fail(f"{hosts}: {e.strerror or e}", Exit.INVALID)
        except ConfigError as e:
            _print_problems(e.problems, head_rev.sha, output)
            raise typer.Exit(int(Exit.INVALID)) from None
    head_result = head_rev.validate()
    if not head_result.ok:
        _print_problems(list(head_result.problems), head_rev.sha, output)
        raise typer.Exit(int(Exit.INVALID))
    assert head_result.state is not None and base_rev is not None
    base_result = base_rev.validate()
    if not base_result.ok:
        sys.stderr.write(
            f"erel-sync: base {base_rev.sha[:12]} is invalid; planning against an empty state\n"
        )
    result = plan_revisions(
        base_result.state,
        head_result.state,
        inventory,
        base_revision=base_rev.sha,
        head_revision=head_rev.sha,
    )
    render = {
        PlanFormat.text: render_text,
        PlanFormat.json: render_json,
        PlanFormat.markdown: render_markdown,
    }[output]
    sys.stdout.write(render(result))
    raise typer.Exit(int(Exit.CHANGES if result.changed else Exit.OK))


def _print_problems(problems: list[Problem], head: str, output: PlanFormat) -> None:
    if output is PlanFormat.json:
        doc = {"valid": False, "head": head, "problems": [p.to_json() for p in problems]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif output is PlanFormat.markdown:
        sys.stdout.write(render_problems_markdown(problems, head))
    else:
        for p in problems:
            sys.stdout.write(f"{p}\n")
        sys.stdout.write(f"invalid: {len(problems)} problem(s)\n")
