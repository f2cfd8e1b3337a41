"""`erel-sync release install|start|stop|restart|status|upgrade|delete`: drive the release driver
of this host directly, without an agent or a broker.

For operators and for trying a Release document by hand: the Release comes from a YAML file
validated like a config revision (`model.validate`), the releases and cache dirs and the host
id from options (or `EREL_SYNC_*` variables). Exit codes: 0 ok, 2 invalid input, 4 runtime
error; errors are one line on stderr, `Reason: message`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from erel_sync.cli.common import Exit, Output, OutputOpt, dump, fail, render_table
from erel_sync.core import reasons
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.model.names import parse_size
from erel_sync.model.paths import DEFAULT_CACHE_DIR, DEFAULT_RELEASES_DIR
from erel_sync.model.settings import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES
from erel_sync.model.specs import ReleaseSpec
from erel_sync.model.validate import SourceFile, validate_sources

if TYPE_CHECKING:  # the driver loads only when a release command runs
    from erel_sync.adapters.releases.driver import ReleaseDriver

app = typer.Typer(
    name="release",
    help="Install, start, stop, upgrade and inspect releases on this host (no agent needed).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
# Reasons that mean the input was wrong rather than the host: exit 2.
INPUT_REASONS = frozenset({reasons.VersionUnknown, reasons.UpgradeImpossible})


FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="YAML file holding the Release document.", exists=False),
]
NameArg = Annotated[
    str | None, typer.Argument(help="Release name (default: the Release in --file).")
]
ReleasesDir = Annotated[
    Path,
    typer.Option(
        "--releases-dir", envvar="EREL_SYNC_RELEASES_DIR", help="Where releases are installed."
    ),
]
CacheDir = Annotated[
    Path,
    typer.Option("--cache-dir", envvar="EREL_SYNC_CACHE_DIR", help="Verified tarball cache."),
]
HostId = Annotated[
    str | None,
    typer.Option("--host-id", envvar="EREL_SYNC_HOST_ID", help="Host id (default: hostname)."),
]
MaxUnpackedOpt = Annotated[
    str | None,
    typer.Option(
        "--max-unpacked-size",
        envvar="EREL_SYNC_MAX_UNPACKED_SIZE",
        help="Largest size a tarball may unpack to: bytes, or e.g. 512MiB, 8GiB (default 8GiB).",
    ),
]
MaxMembersOpt = Annotated[
    int | None,
    typer.Option(
        "--max-archive-members",
        envvar="EREL_SYNC_MAX_ARCHIVE_MEMBERS",
        min=1,
        help="Largest number of members in a tarball (default 200000).",
    ),
]
VersionOpt = Annotated[str, typer.Option("--version", "-V", help="Release version.")]

DEFAULT_RELEASES = Path(DEFAULT_RELEASES_DIR)
DEFAULT_CACHE = Path(DEFAULT_CACHE_DIR)


def _driver(
    releases_dir: Path,
    cache_dir: Path,
    host_id: str | None,
    *,
    max_unpacked_size: str | None = None,
    max_archive_members: int | None = None,
) -> ReleaseDriver:
    """The driver, with the archive limits given or else the defaults of an agent without
    `spec.artifacts` in its AgentSettings."""
    from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver  # noqa: PLC0415

    host = host_id or socket.gethostname().split(".")[0]
    try:
        settings = DriverSettings(
            releases_dir=releases_dir.resolve(),
            cache_dir=cache_dir.resolve(),
            host_id=host,
            max_unpacked_bytes=parse_size(
                DEFAULT_MAX_UNPACKED_BYTES if max_unpacked_size is None else max_unpacked_size
            ),
            max_archive_members=max_archive_members or DEFAULT_MAX_ARCHIVE_MEMBERS,
        )
    except ValueError as exc:
        fail(str(exc), Exit.INVALID)
    return ReleaseDriver(settings)


def _load_spec(file: Path, name: str | None) -> ReleaseSpec:
    if file.suffix not in (".yaml", ".yml"):
        fail(f"{file}: a Release file must end in .yaml or .yml", Exit.INVALID)
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}", Exit.INVALID)
    result = validate_sources([SourceFile(file.name, data)])
    if result.problems or result.state is None:
        first = str(result.problems[0]) if result.problems else "invalid"
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        fail(f"{file.parent / first}{more}", Exit.INVALID)
    releases = result.state.releases
    if name is not None:
        if name not in releases:
            fail(f"{file}: no Release named {name!r}", Exit.INVALID)
        return releases[name]
    if len(releases) != 1:
        fail(f"{file}: holds {len(releases)} Releases; name one", Exit.INVALID)
    return next(iter(releases.values()))


def _name(name: str | None, file: Path | None) -> str:
    if name:
        return name
    if file is not None:
        return _load_spec(file, None).name
    fail("name a release (argument) or give --file", Exit.INVALID)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except reasons.DriverError as exc:
        _fail_driver(exc)


def _fail_driver(exc: reasons.DriverError) -> NoReturn:
    code = Exit.INVALID if exc.reason in INPUT_REASONS else Exit.RUNTIME
    cause = f" (cause: {exc.cause})" if exc.cause else ""
    fail(f"{exc.reason}: {exc.message}{cause}", code)


def _print(observed: list[ObservedRelease], output: Output) -> None:
    if output is Output.json:
        typer.echo(json.dumps([o.to_json() for o in observed], indent=2, sort_keys=True))
        return
    if output is Output.yaml:
        typer.echo(dump([o.to_json() for o in observed], output))
        return
    rows = [
        [
            o.name,
            "yes" if o.running else "no",
            o.current or "-",
            o.permanent or "-",
            "-" if o.healthy is None else ("yes" if o.healthy else "no"),
            o.reason,
            o.message if output is Output.wide else o.message[:80],
        ]
        for o in observed
    ]
    headers = ["NAME", "RUNNING", "CURRENT", "PERMANENT", "HEALTHY", "REASON", "MESSAGE"]
    typer.echo(render_table(headers, rows, styled=sys.stdout.isatty()))


@app.command()
def install(
    file: Annotated[Path, typer.Option("--file", "-f", help="YAML file with the Release.")],
    version: VersionOpt,
    name: Annotated[str | None, typer.Option("--name", help="Release in a multi-doc file.")] = None,
    releases_dir: ReleasesDir = DEFAULT_RELEASES,
    cache_dir: CacheDir = DEFAULT_CACHE,
    host_id: HostId = None,
    output: OutputOpt = Output.table,
    max_unpacked_size: MaxUnpackedOpt = None,
    max_archive_members: MaxMembersOpt = None,
) -> None:
    """Fetch, verify and unpack a version, and render its config. Starts nothing.

    Example:
      erel-sync release install -f hello.yaml -V 0.1.0 --releases-dir /tmp/rel
    """
    spec = _load_spec(file, name)
    driver = _driver(
        releases_dir,
        cache_dir,
        host_id,
        max_unpacked_size=max_unpacked_size,
        max_archive_members=max_archive_members,
    )
    _print([_run(driver.install(spec, version)).observed], output)


@app.command()
def upgrade(
    file: Annotated[Path, typer.Option("--file", "-f", help="YAML file with the Release.")],
    version: VersionOpt,
    name: Annotated[str | None, typer.Option("--name", help="Release in a multi-doc file.")] = None,
    releases_dir: ReleasesDir = DEFAULT_RELEASES,
    cache_dir: CacheDir = DEFAULT_CACHE,
    host_id: HostId = None,
    output: OutputOpt = Output.table,
    max_unpacked_size: MaxUnpackedOpt = None,
    max_archive_members: MaxMembersOpt = None,
) -> None:
    """Move a release to a version (hot when a relup allows it, else by restart).

    A version that fails its health probation is rolled back automatically (exit 4).

    Example:
      erel-sync release upgrade -f hello.yaml -V 0.2.0 --releases-dir /tmp/rel
    """
    spec = _load_spec(file, name)
    driver = _driver(
        releases_dir,
        cache_dir,
        host_id,
        max_unpacked_size=max_unpacked_size,
        max_archive_members=max_archive_members,
    )

    async def go() -> ObservedRelease:
        result = await driver.upgrade(spec, version)
        typer.echo(
            f"{spec.name}: {result.from_version} -> {result.to_version} "
            f"({result.path.value}: {result.why})",
            err=True,
        )
        return result.observed  # the upgrade ends with an observation, health included

    _print([_run(go())], output)


def _lifecycle(verb: str) -> Any:
    def command(
        name: NameArg = None,
        file: FileOpt = None,
        releases_dir: ReleasesDir = DEFAULT_RELEASES,
        cache_dir: CacheDir = DEFAULT_CACHE,
        host_id: HostId = None,
        output: OutputOpt = Output.table,
    ) -> None:
        driver = _driver(releases_dir, cache_dir, host_id)
        release = _name(name, file)
        step: StepResult = _run(getattr(driver, verb)(release))
        _print([step.observed], output)

    command.__name__ = verb
    command.__doc__ = (
        {
            "start": "Start a release as a daemon and wait until it is healthy.",
            "stop": "Stop a release: init:stop(), then a kill after its stop_timeout.",
            "restart": "Stop, then start a release (boots its permanent version).",
        }[verb]
        + "\n\n    On a host run by an agent, use `erel-sync "
        + verb
        + "` instead: the agent\n    would undo a change made here behind its back (no hold)."
        + f"\n\n    Example:\n      erel-sync release {verb} hello --releases-dir /tmp/rel\n"
    )
    return command


for _verb in ("start", "stop", "restart"):
    app.command(name=_verb)(_lifecycle(_verb))


@app.command()
def status(
    name: NameArg = None,
    file: FileOpt = None,
    health: Annotated[bool, typer.Option("--health", help="Also run the health check.")] = False,
    releases_dir: ReleasesDir = DEFAULT_RELEASES,
    cache_dir: CacheDir = DEFAULT_CACHE,
    host_id: HostId = None,
    output: OutputOpt = Output.table,
) -> None:
    """Observe one release, or every release this host id installed.

    Examples:
      erel-sync release status --releases-dir /tmp/rel
      erel-sync release status hello --health -o json --releases-dir /tmp/rel
    """
    driver = _driver(releases_dir, cache_dir, host_id)
    if name is None and file is None:
        seen = _run(driver.observe_all(health=health))
        _print(list(seen.values()), output)
        return
    _print([_run(driver.observe(_name(name, file), health=health))], output)


@app.command()
def delete(
    name: NameArg = None,
    file: FileOpt = None,
    releases_dir: ReleasesDir = DEFAULT_RELEASES,
    cache_dir: CacheDir = DEFAULT_CACHE,
    host_id: HostId = None,
) -> None:
    """Stop a release and remove its files (only a release this host id installed).

    Example:
      erel-sync release delete hello --releases-dir /tmp/rel
    """
    driver = _driver(releases_dir, cache_dir, host_id)
    release = _name(name, file)
    _run(driver.delete(release))
    typer.echo(f"{release}: deleted", err=True)
