"""`erel-sync secret encrypt|rekey`: write the secrets of a Release's or Group's `config`.

A Typer sub-app (`app`) that the root application mounts as `secret`. A secret is the JSON of
a config value, encrypted with age to the hosts that may read it (`erel-sync keygen --host`
prints a host's recipient), and written as `{$secret: {age: ..., to: [...]}}` in place of the
value (docs/secrets.md). Nothing here talks to the broker. Exit codes: 0 ok, 2 invalid input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from erel_sync.adapters import age
from erel_sync.cli.common import Exit, fail
from erel_sync.model import secrets

app = typer.Typer(
    help="Encrypt config values to the hosts that may read them (age).",
    no_args_is_help=True,
)

ToOpt = Annotated[
    list[str] | None,
    typer.Option("--to", help="An age recipient (age1...) that may read it; repeat for each host."),
]
GroupOpt = Annotated[
    str | None,
    typer.Option("--group", help="Also every recipient the group lists (`recipients`) in --repo."),
]
RepoOpt = Annotated[Path, typer.Option("--repo", help="The config directory that holds the group.")]


def _recipients(to: list[str] | None, group: str | None, repo: Path) -> list[str]:
    """--to, then the group's `recipients` from the config directory (no duplicates)."""
    out = list(to or [])
    if group is not None:
        # Imported here: GitPython costs ~10 MiB that the other commands never need.
        from erel_sync.adapters.git.configsource import SourceError, read_directory  # noqa: PLC0415

        try:
            result = read_directory(repo).validate()
        except SourceError as e:
            fail(str(e), Exit.INVALID)
        if result.state is None or group not in result.state.groups:
            fail(f"no valid group {group!r} in {repo} (erel-sync validate {repo})", Exit.INVALID)
        out += list(result.state.groups[group].recipients.values())
    return list(dict.fromkeys(out))


def _value(text: str, *, as_json: bool) -> Any:
    if not as_json:
        return text.removesuffix("\n")
    try:
        return json.loads(text)
    except ValueError as e:
        fail(f"stdin is not JSON ({e}); leave out --json to encrypt it as a string", Exit.INVALID)


def _secret(value: Any, to: list[str]) -> str:
    if not to:
        fail("name at least one recipient with --to", Exit.INVALID)
    try:
        data = age.encrypt(secrets.plain_json(value), to)
    except age.AgeError as e:
        fail(str(e), Exit.INVALID)
    return json.dumps(secrets.secret_node(data, to))


@app.command()
def encrypt(
    to: ToOpt = None,
    group: GroupOpt = None,
    repo: RepoOpt = Path("."),
    as_json: Annotated[
        bool, typer.Option("--json", help="stdin is a JSON value (a number, a {$binary: ...}).")
    ] = False,
) -> None:
    """Encrypt the value on stdin and print it as a config value (one line of YAML).

    Examples:
      printf %s 's3cret' | erel-sync secret encrypt --to age1... --to age1...
      printf %s 's3cret' | erel-sync secret encrypt --group web --repo .
      echo '{"$binary": "s3cret"}' | erel-sync secret encrypt --json --to age1...
    """
    value = _value(sys.stdin.read(), as_json=as_json)
    typer.echo(_secret(value, _recipients(to, group, repo)))


@app.command()
def rekey(
    identity: Annotated[
        Path, typer.Option("--identity", help="An age identity file that can read it.")
    ],
    to: ToOpt = None,
    group: GroupOpt = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Encrypt the secret on stdin (`{$secret: ...}`, JSON) again, to the recipients given:
    a host added to or removed from a group. The identity must be one of its recipients
    (keep an operator's own among every secret's)."""
    try:
        node = json.loads(sys.stdin.read())
    except ValueError as e:
        fail(f"stdin is not a secret ({e})", Exit.INVALID)
    problem = secrets.secret_problem(node) if secrets.is_secret(node) else "not {$secret: ...}"
    if problem is not None:
        fail(f"stdin is not a well-formed secret: {problem}", Exit.INVALID)
    try:
        key = age.load_identity(identity)
        (plain,) = secrets.reveal([node], age.Decrypt(key))
    except (age.AgeError, secrets.SecretUnavailable) as e:
        fail(str(e), Exit.INVALID)
    typer.echo(_secret(plain, _recipients(to, group, repo)))
