"""Build the example Erlang releases and read their manifest.

What: runs `erlang/build-examples.sh OUTDIR` (rebar3 + relx, offline) and returns the
manifest it writes, `OUTDIR/manifest.json`, as frozen dataclasses: one `ExampleArtifact`
per release tarball (hello 0.1.0, 0.2.0, 0.3.0 and ticker 0.1.0 today).
Who: the integration and end-to-end tests and the `erel-sync dev` command, which need real
release tarballs (with a `file://` URL and a sha256) to put in Release documents and drive
real agents.
Why here: it runs a subprocess, so it lives in `adapters`. The script caches its output
(a hash of the Erlang sources), so calling this again with unchanged sources costs well under
a second; concurrent calls on one OUTDIR serialise on a lock in the script.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUILD_SCRIPT",
    "ExampleArtifact",
    "ExampleManifest",
    "ExamplesError",
    "build_examples",
    "default_repo_root",
    "load_manifest",
]

BUILD_SCRIPT = Path("erlang") / "build-examples.sh"
MANIFEST_NAME = "manifest.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_STDERR_TAIL = 4000


class ExamplesError(RuntimeError):
    """The example releases could not be built, or their manifest is missing or malformed."""


@dataclass(frozen=True, slots=True)
class ExampleArtifact:
    """One release tarball built from `erlang/examples/<name>/<version>/`."""

    name: str
    version: str
    path: Path
    sha256: str
    size: int

    def url(self) -> str:
        """The tarball as a `file://` URL (what a Release document's `artifact.url` holds)."""
        return self.path.as_uri()


@dataclass(frozen=True, slots=True)
class ExampleManifest:
    """Every artifact of one build, in manifest order (releases by name, versions ascending)."""

    artifacts: tuple[ExampleArtifact, ...]

    def __iter__(self) -> Iterator[ExampleArtifact]:
        return iter(self.artifacts)

    def __len__(self) -> int:
        return len(self.artifacts)

    def releases(self) -> tuple[str, ...]:
        """Release names, without duplicates, in manifest order."""
        return tuple(dict.fromkeys(a.name for a in self.artifacts))

    def versions(self, name: str) -> tuple[str, ...]:
        """The versions built for release `name` (ascending); empty if there is no such release."""
        return tuple(a.version for a in self.artifacts if a.name == name)

    def get(self, name: str, version: str) -> ExampleArtifact:
        """The artifact of `name` at `version`. Raises KeyError when it was not built."""
        for artifact in self.artifacts:
            if artifact.name == name and artifact.version == version:
                return artifact
        raise KeyError(f"no example release {name} {version} (built: {self._summary()})")

    def _summary(self) -> str:
        return ", ".join(f"{a.name} {a.version}" for a in self.artifacts) or "nothing"


def default_repo_root() -> Path:
    """The source checkout this module belongs to (it holds `erlang/build-examples.sh`)."""
    return Path(__file__).resolve().parents[2]


def build_examples(
    out_dir: Path, repo_root: Path | None = None, *, timeout: float = 900.0
) -> ExampleManifest:
    """Build (or reuse the cached build of) the example releases into `out_dir`.

    `repo_root` defaults to the checkout this module lives in. Raises ExamplesError when the
    script is missing, fails (its stderr tail is in the message), times out, or writes a
    manifest that does not describe the tarballs on disk.
    """
    root = (repo_root if repo_root is not None else default_repo_root()).resolve()
    script = root / BUILD_SCRIPT
    if not script.is_file():
        raise ExamplesError(
            f"{script} not found: build_examples needs the erel-sync source tree "
            "(pass repo_root= when running from an installed package)"
        )
    out = Path(out_dir).resolve()
    try:
        proc = subprocess.run(
            ["bash", str(script), str(out)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ExamplesError(f"cannot run {script}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ExamplesError(f"{script} did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-_STDERR_TAIL:] or proc.stdout.strip()[-_STDERR_TAIL:]
        raise ExamplesError(f"{script} {out} failed with exit code {proc.returncode}:\n{tail}")
    return load_manifest(out / MANIFEST_NAME)


def load_manifest(path: Path) -> ExampleManifest:
    """Read and check a manifest written by `erlang/build-examples.sh`.

    Format: `{"<release>": {"<version>": {"path": "/abs.tar.gz", "sha256": "<hex>",
    "size": <bytes>}}}`. Every tarball must exist with the recorded size.
    """
    try:
        raw: object = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExamplesError(f"cannot read example manifest {path}: {exc}") from exc
    except ValueError as exc:
        raise ExamplesError(f"example manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ExamplesError(f"example manifest {path}: expected an object of releases")
    artifacts: list[ExampleArtifact] = []
    for name, versions in raw.items():
        if not isinstance(versions, dict):
            raise ExamplesError(f"example manifest {path}: {name}: expected an object of versions")
        for version, entry in versions.items():
            artifacts.append(_artifact(path, str(name), str(version), entry))
    return ExampleManifest(tuple(artifacts))


def _artifact(manifest: Path, name: str, version: str, entry: object) -> ExampleArtifact:
    where = f"example manifest {manifest}: {name} {version}"
    if not isinstance(entry, dict):
        raise ExamplesError(f"{where}: expected an object with path, sha256 and size")
    path, sha256, size = entry.get("path"), entry.get("sha256"), entry.get("size")
    if not isinstance(path, str) or not Path(path).is_absolute():
        raise ExamplesError(f"{where}: path must be an absolute path, got {path!r}")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ExamplesError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ExamplesError(f"{where}: size must be a non-negative integer, got {size!r}")
    tarball = Path(path)
    try:
        actual = tarball.stat().st_size
    except OSError as exc:
        raise ExamplesError(f"{where}: {tarball} is missing ({exc.strerror})") from exc
    if actual != size:
        raise ExamplesError(f"{where}: {tarball} has {actual} bytes, the manifest says {size}")
    return ExampleArtifact(name=name, version=version, path=tarball, sha256=sha256, size=size)
