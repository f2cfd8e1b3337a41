"""Release tarballs: fetch into a content-addressed cache, verify, and unpack safely.

Called by the release driver (`adapters.driver`) before any install or upgrade. Lives in
`adapters` because it does network and disk I/O; stdlib only (urllib in a worker thread).

Guarantees:
- The cache holds only verified files: `cache_dir/sha256/<hex>.tar.gz` appears (by rename) only
  after its sha256 matched. A mismatch, a truncated or oversized download leaves nothing there.
- A tarball is inspected whole before anything is written: absolute paths, `..`, links that
  leave the root (or pass through another link), device files and fifos, names inside what the
  agent owns (`ArchiveLimits.reserved`) are refused with `UnsafeArchive`, and so is an archive
  that unpacks to more than the limit or than the free space, at the first member that crosses
  it. Extraction is then our own (`extract_tarball`), with the guarantees of tarfile's `data`
  filter on every Python, 3.11.2 included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from erel_sync.adapters.store import fsync_dir
from erel_sync.core import reasons
from erel_sync.model.names import format_size
from erel_sync.model.settings import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES
from erel_sync.model.specs import Artifact

CHUNK = 256 * 1024


@dataclass(frozen=True)
class ArtifactSettings:
    cache_dir: Path
    max_bytes: int = 2 * 1024**3  # refuse larger downloads even when the spec gives no size
    io_timeout: float = 30.0  # per socket operation
    deadline: float = 600.0  # whole download


class _Cancelled(Exception):
    pass


class ArtifactStore:
    """The content-addressed cache of verified release tarballs."""

    def __init__(self, settings: ArtifactSettings) -> None:
        self.settings = settings
        self.root = settings.cache_dir / "sha256"
        self.tmp = settings.cache_dir / "tmp"

    def path_for(self, sha256: str) -> Path:
        return self.root / f"{sha256}.tar.gz"

    async def fetch(self, artifact: Artifact) -> Path:
        """The verified tarball's path in the cache, downloading it when missing."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._fetch_sync, artifact, cancel)
        finally:
            cancel.set()  # stops the worker between chunks when the caller was cancelled

    def _fetch_sync(self, artifact: Artifact, cancel: threading.Event) -> Path:
        final = self.path_for(artifact.sha256)
        if final.is_file():
            if _sha256_file(final) == artifact.sha256:
                return final
            final.unlink(missing_ok=True)  # corrupted on disk: fetch it again
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        part = self.tmp / f"{artifact.sha256[:16]}-{uuid.uuid4().hex}.part"
        try:
            digest = self._download(artifact, part, cancel)
            if digest != artifact.sha256:
                raise reasons.driver_error(
                    reasons.ChecksumMismatch,
                    f"sha256 of {_safe_url(artifact.url)} is {digest}, expected {artifact.sha256}",
                )
            os.replace(part, final)
            fsync_dir(self.root)
            return final
        finally:
            part.unlink(missing_ok=True)

    def _download(self, artifact: Artifact, part: Path, cancel: threading.Event) -> str:
        url = urllib.parse.urlsplit(artifact.url)
        limit = artifact.size if artifact.size is not None else self.settings.max_bytes
        where = _safe_url(artifact.url)
        try:
            if url.scheme == "file":
                if url.netloc not in ("", "localhost"):
                    raise reasons.driver_error(reasons.ArtifactUnavailable, f"bad file URL {where}")
                source = Path(urllib.request.url2pathname(url.path))
                with source.open("rb") as src:
                    size: int | None = os.fstat(src.fileno()).st_size
                    return self._copy(
                        src, part=part, declared=size, limit=limit, artifact=artifact, cancel=cancel
                    )
            if url.scheme in ("http", "https"):
                request = urllib.request.Request(
                    artifact.url, headers={"User-Agent": "erel-sync", "Accept-Encoding": "identity"}
                )
                with urllib.request.urlopen(request, timeout=self.settings.io_timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    declared = int(length) if length and length.isdigit() else None
                    return self._copy(
                        resp,
                        part=part,
                        declared=declared,
                        limit=limit,
                        artifact=artifact,
                        cancel=cancel,
                    )
            raise reasons.driver_error(
                reasons.ArtifactUnavailable, f"unsupported URL scheme {url.scheme!r}"
            )
        except reasons.DriverError:
            raise
        except _Cancelled:
            raise reasons.driver_error(
                reasons.ArtifactUnavailable, f"download of {where} cancelled"
            ) from None
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError is also the open response: free its socket
            raise reasons.driver_error(
                reasons.ArtifactUnavailable, f"{where}: HTTP {exc.code} {exc.reason}"
            ) from exc
        except (OSError, HTTPException, ValueError) as exc:
            raise reasons.driver_error(
                reasons.ArtifactUnavailable, f"{where}: {type(exc).__name__}: {exc}"
            ) from exc

    def _copy(
        self,
        src: BinaryIO,
        *,
        part: Path,
        declared: int | None,
        limit: int,
        artifact: Artifact,
        cancel: threading.Event,
    ) -> str:
        where = _safe_url(artifact.url)
        if declared is not None and declared > limit:
            raise reasons.driver_error(
                reasons.ArtifactTooLarge, f"{where} is {declared} bytes, the limit is {limit}"
            )
        deadline = time.monotonic() + self.settings.deadline
        digest = hashlib.sha256()
        total = 0
        with part.open("wb") as out:
            while chunk := src.read(CHUNK):
                if cancel.is_set():
                    raise _Cancelled
                total += len(chunk)
                if total > limit:
                    raise reasons.driver_error(
                        reasons.ArtifactTooLarge, f"{where} exceeds {limit} bytes"
                    )
                if time.monotonic() > deadline:
                    raise reasons.driver_error(
                        reasons.ArtifactUnavailable,
                        f"{where}: download took longer than {self.settings.deadline:.0f}s",
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if declared is not None and total != declared:
            raise reasons.driver_error(
                reasons.ArtifactUnavailable, f"{where}: truncated ({total} of {declared} bytes)"
            )
        if artifact.size is not None and total != artifact.size:
            raise reasons.driver_error(
                reasons.ArtifactUnavailable,
                f"{where}: got {total} bytes, the spec says {artifact.size}",
            )
        return digest.hexdigest()


def _safe_url(url: str) -> str:
    """The URL without credentials or query (which may carry tokens), bounded."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))[:300]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ extraction


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold. `reserved`: top-level names the agent owns in the target
    (its private directory); an archive naming them, or linking into them, is refused.
    `free_space_of`: refuse an archive that would not fit in that file system's free space."""

    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES  # AgentSettings spec.artifacts
    max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS
    reserved: frozenset[str] = frozenset()
    free_space_of: Path | None = None


def _unsafe(message: str) -> reasons.DriverError:
    return reasons.driver_error(reasons.UnsafeArchive, message)


def _clean_name(name: str) -> str:
    if not name or "\0" in name:
        raise _unsafe("member with an empty or NUL name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _unsafe(f"absolute member path {name[:120]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"member path with '..': {name[:120]!r}")
    return "/".join(parts)


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _resolve_link(name: str, target: str, links: set[str]) -> str:
    """Walk the target one component at a time, as the kernel would: leaving the root or
    passing through another symlink (whose own target could lead anywhere) is refused.
    Returns where the link points, relative to the root."""
    parts = [p for p in posixpath.dirname(name).split("/") if p]
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise _unsafe(f"symlink {name[:120]!r} points out of the root")
            parts.pop()
            continue
        parts.append(comp)
        if "/".join(parts) in links:
            raise _unsafe(f"symlink {name[:120]!r} points through another symlink")
    return "/".join(parts)


def _free_bytes(path: Path) -> int | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


class _Checker:
    """Checks members one at a time, in archive order, as their headers are read: a limit is
    enforced at the first member that crosses it, before that member's data is decompressed
    (a small gzip bomb costs a header, not minutes of CPU)."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.links: set[str] = set()
        self.seen: set[str] = set()
        self.total = 0
        self.count = 0
        free = _free_bytes(limits.free_space_of) if limits.free_space_of is not None else None
        self.free = free

    def check(self, m: tarfile.TarInfo) -> str:
        limits = self.limits
        self.count += 1
        if self.count > limits.max_members:
            raise _unsafe(f"more than {limits.max_members} members (the max_members limit)")
        name = _clean_name(m.name)
        if name.split("/", 1)[0] in limits.reserved:
            raise _unsafe(
                f"member {name[:120]!r} is inside {name.split('/', 1)[0]}/, which the agent owns"
            )
        if any(a in self.links for a in _ancestors(name)):
            raise _unsafe(f"member {name[:120]!r} lies under a symlink")
        if m.issym():
            target = m.linkname
            if not target or target.startswith("/"):
                raise _unsafe(f"symlink {name[:120]!r} points to an absolute path")
            resolved = _resolve_link(name, target, self.links)
            if resolved.split("/", 1)[0] in limits.reserved:
                raise _unsafe(f"symlink {name[:120]!r} points into what the agent owns")
            self.links.add(name)
        elif m.islnk():
            target = _clean_name(m.linkname)  # hardlink targets are archive-root relative
            if target not in self.seen or target in self.links:
                raise _unsafe(f"hardlink {name[:120]!r} points outside the archive")
        elif m.issparse() or not (m.isreg() or m.isdir()):
            raise _unsafe(f"member {name[:120]!r} is a device, fifo or other special file")
        self.total += max(0, m.size)
        if self.total > limits.max_unpacked_bytes:
            raise _unsafe(
                f"unpacks to more than {format_size(limits.max_unpacked_bytes)} "
                f"(the max_unpacked_size limit; at {name[:120]!r})"
            )
        if self.free is not None and self.total > self.free:
            raise _unsafe(
                f"unpacks to more than the {format_size(self.free)} free for releases "
                f"(at {name[:120]!r})"
            )
        self.seen.add(name)
        return name


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _unsafe(f"not a readable tarball: {exc}") from exc


Walked = Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]


def _walk(path: Path, limits: ArchiveLimits) -> Walked:
    """Every member with its checked name, read lazily (never `getmembers()`, which would
    decompress the whole archive before a single limit is looked at)."""
    checker = _Checker(limits)
    tar = _open_archive(path)
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise _unsafe(f"not a readable tarball: {exc}") from exc
            if member is None:
                return
            yield tar, member, checker.check(member)


def inspect_tarball(path: Path, limits: ArchiveLimits) -> list[str]:
    """Every member's name, checked; raises `UnsafeArchive` on the first unsafe one. Writes
    nothing."""
    return [name for _, _, name in _walk(path, limits)]


def extract_tarball(
    path: Path, dest: Path, limits: ArchiveLimits, *, keep_existing: bool = False
) -> None:
    """Inspect every member, then extract into `dest` (created). With `keep_existing`, files
    already there are left alone (release_handler's `keep_old_files`: a running node's files are
    never rewritten under it).

    Extraction is our own, the same on every Python: tarfile's `filter="data"` exists only from
    3.11.4 (Debian 12 has 3.11.2). What it guarantees, and so does this: no setuid, setgid or
    sticky bits, no group/other write, no device files, no links out, nothing written through a
    symlink, and no ownership taken from the archive (files belong to the agent's user)."""
    inspect_tarball(path, limits)
    dest.mkdir(parents=True, exist_ok=True)
    writer = _Writer(dest, keep_existing=keep_existing)
    try:
        for tar, member, name in _walk(path, limits):
            if name:  # "" is the archive root itself (`./`)
                writer.member(tar, member, name)
    except reasons.DriverError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise reasons.driver_error(
            reasons.InstallFailed, f"extracting {path.name}: {type(exc).__name__}: {exc}"
        ) from exc


def _file_mode(member: tarfile.TarInfo) -> int:
    mode = member.mode & 0o755  # no setuid/setgid/sticky, no group/other write
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


class _Writer:
    """Writes checked members under `dest`, never through a symlink: every directory on the
    way is a real one (checked once per extraction, then remembered), and files are created
    with O_NOFOLLOW | O_EXCL."""

    def __init__(self, dest: Path, *, keep_existing: bool) -> None:
        self.dest = dest
        self.keep_existing = keep_existing
        self.dirs: set[str] = {""}  # relative paths known to be real directories

    def parent(self, name: str) -> Path:
        """The member's directory, created as needed. A component that is a symlink (left by
        an earlier archive, or made by hand) or a file is refused."""
        head, _, _ = name.rpartition("/")
        if head not in self.dirs:
            current, rel = self.dest, ""
            for part in head.split("/"):
                current, rel = current / part, f"{rel}/{part}" if rel else part
                if rel in self.dirs:
                    continue
                try:
                    st = os.lstat(current)
                except FileNotFoundError:
                    current.mkdir(mode=0o755)
                else:
                    if not stat.S_ISDIR(st.st_mode):
                        raise _unsafe(
                            f"{name[:120]!r} would be written through {part!r}, not a directory"
                        )
                self.dirs.add(rel)
        return self.dest / head if head else self.dest

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        target = self.parent(name) / name.rpartition("/")[2]
        if member.isdir():
            try:
                target.mkdir(mode=0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    raise _unsafe(f"directory {name[:120]!r} is already a file or a link") from None
            self.dirs.add(name)
            return
        if member.issym():
            self._place(name, target, lambda: os.symlink(member.linkname, target))
        elif member.islnk():
            link = _clean_name(member.linkname)
            source = self.parent(link) / link.rpartition("/")[2]
            if not stat.S_ISREG(os.lstat(source).st_mode):
                raise _unsafe(f"hardlink {name[:120]!r} does not point to a regular file")
            self._place(name, target, lambda: os.link(source, target, follow_symlinks=False))
        else:
            self._place(name, target, lambda: _write_file(tar, member, target))

    def _place(self, name: str, target: Path, create: Callable[[], None]) -> None:
        try:
            create()
        except FileExistsError:
            if self.keep_existing:
                return
            if stat.S_ISDIR(os.lstat(target).st_mode):
                raise _unsafe(f"{name[:120]!r} is already a directory") from None
            os.unlink(target)  # a later member of the same name wins, as with tar
            create()


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o600)
    src = tar.extractfile(member)
    with os.fdopen(fd, "wb") as out:
        if src is None:
            raise _unsafe(f"member {member.name[:120]!r} has no data")
        with src:
            left = member.size
            while left > 0 and (chunk := src.read(min(CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)
        if left:
            raise _unsafe(f"member {member.name[:120]!r} is truncated")
        # fchmod, not chmod: the mode lands on the file just written, whatever the umask.
        os.fchmod(out.fileno(), _file_mode(member))
        os.utime(out.fileno(), (member.mtime, member.mtime))


@contextlib.contextmanager
def staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A fresh directory next to its final place, removed on any failure."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
