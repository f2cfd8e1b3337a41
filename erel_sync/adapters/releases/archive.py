"""Release tarballs, unpacked safely: every member checked before anything is written, then
written by our own code.

Called by `adapters.releases.files` (first install, a version added beside others, the check
before an in-node unpack). Lives in `adapters` because it writes the disk; stdlib only.

Guarantees:
- A tarball is inspected whole before anything is written: absolute paths, `..`, links that
  leave the root (or pass through another link), device files and fifos, names inside what the
  agent owns (`ArchiveLimits.reserved`) are refused with `UnsafeArchive`, and so is an archive
  that unpacks to more than the limit or than the free space, at the first member that crosses
  it (headers are read one at a time; a member's data is never inflated before its header
  passed).
- Extraction is our own (`extract_tarball`), with the guarantees of tarfile's `data` filter on
  every Python, 3.11.2 included (`filter=` exists only from 3.11.4).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from erel_sync.core import reasons
from erel_sync.model.names import format_size
from erel_sync.model.settings import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES

CHUNK = 256 * 1024


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
