"""adapters.releases.artifacts: the verified cache and the safe extraction, on synthetic tarballs.

Downloads go to a local http.server on 127.0.0.1 in a thread (no other network).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from erel_sync.adapters.releases.archive import ArchiveLimits, extract_tarball, inspect_tarball
from erel_sync.adapters.releases.artifacts import ArtifactSettings, ArtifactStore
from erel_sync.core import reasons
from erel_sync.model.specs import Artifact

MAX_BYTES = 10 * 1024**2
MAX_MEMBERS = 1000
LIMITS = ArchiveLimits(MAX_BYTES, MAX_MEMBERS, reserved=frozenset({".erel-sync"}))


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tuple):
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(m)
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def header_only_tar(path: Path, name: str, size: int) -> Path:
    """A gzip'd tar whose second member declares `size` bytes but carries none: a reader that
    looks at each header before inflating the data never notices the missing bytes."""
    first = tarfile.TarInfo("releases/0.1.0/ok.rel")
    big = tarfile.TarInfo(name)
    big.size = size
    with gzip.open(path, "wb") as out:
        out.write(first.tobuf(tarfile.GNU_FORMAT))
        out.write(big.tobuf(tarfile.GNU_FORMAT))
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------------------------- extraction


def test_safe_tarball_extracts(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "ok.tar.gz",
        [
            ("bin/hello", b"#!/bin/sh\necho hi\n"),
            ("releases/0.1.0/hello.rel", b"{release,x}."),
            special("releases/0.1.0/link", tarfile.SYMTYPE, "hello.rel"),
            special("releases/hard", tarfile.LNKTYPE, "releases/0.1.0/hello.rel"),
        ],
    )
    dest = tmp_path / "out"
    extract_tarball(tar, dest, LIMITS)
    assert (dest / "bin/hello").read_bytes().startswith(b"#!")
    assert os.access(dest / "bin/hello", os.X_OK)
    assert (dest / "releases/0.1.0/link").read_bytes() == b"{release,x}."
    assert (dest / "releases/hard").read_bytes() == b"{release,x}."


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("ok", b"1"), ("../evil", b"x")], "'..'"),
        ([("ok", b"1"), ("a/../../evil", b"x")], "'..'"),
        ([("/etc/evil", b"x")], "absolute"),
        ([special("link", tarfile.SYMTYPE, "../../etc/passwd")], "out of the root"),
        ([special("a/link", tarfile.SYMTYPE, "../..")], "out of the root"),
        ([special("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute"),
        ([special("hard", tarfile.LNKTYPE, "../outside")], "'..'"),
        ([special("hard", tarfile.LNKTYPE, "/etc/passwd")], "absolute"),
        ([special("hard", tarfile.LNKTYPE, "not/in/archive")], "outside the archive"),
        ([special("dev", tarfile.CHRTYPE)], "device"),
        ([special("blk", tarfile.BLKTYPE)], "device"),
        ([special("fifo", tarfile.FIFOTYPE)], "fifo"),
        ([special("d", tarfile.SYMTYPE, "."), ("d/x", b"1")], "under a symlink"),
        (
            [special("a", tarfile.SYMTYPE, "."), special("b", tarfile.SYMTYPE, "a/..")],
            "through another symlink",
        ),
        # An artifact decides nothing about the node's identity (home, cookie, pipes, record).
        ([(".erel-sync/home/.erlang.cookie", b"KNOWNCOOKIE")], "the agent owns"),
        ([("./.erel-sync/release.json", b"{}")], "the agent owns"),
        ([special(".erel-sync", tarfile.DIRTYPE)], "the agent owns"),
        ([special(".erel-sync", tarfile.SYMTYPE, "releases")], "the agent owns"),
        ([special("home", tarfile.SYMTYPE, ".erel-sync/home")], "points into what the agent owns"),
        ([special("lib/x", tarfile.SYMTYPE, "../.erel-sync")], "points into what the agent owns"),
    ],
)
def test_unsafe_tarballs_are_refused_before_anything_is_written(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], why: str
) -> None:
    tar = make_tar(tmp_path / "bad.tar.gz", [("first/ok.txt", b"ok"), *members])
    dest = tmp_path / "out"
    with pytest.raises(reasons.DriverError) as info:
        extract_tarball(tar, dest, LIMITS)
    assert info.value.reason == reasons.UnsafeArchive
    assert why in info.value.message
    assert not dest.exists()
    assert listing(tmp_path) == ["bad.tar.gz"]


def test_size_and_member_limits(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "big.tar.gz", [(f"f{i}", b"x" * 100) for i in range(20)])
    with pytest.raises(reasons.DriverError, match="more than"):
        inspect_tarball(tar, ArchiveLimits(1000, 100))
    with pytest.raises(reasons.DriverError, match="members"):
        inspect_tarball(tar, ArchiveLimits(10**6, 10))


def test_a_gzip_bomb_is_refused_at_its_first_member_without_decompressing_it(
    tmp_path: Path,
) -> None:
    # 64 GiB of zeros declared in one member, a few hundred bytes on disk: the header alone
    # crosses the limit, so its data is never inflated (measured before: ~30 s of CPU for 8 GiB).
    bomb = header_only_tar(tmp_path / "bomb.tar.gz", "lib/huge.bin", 64 * 1024**3)
    with pytest.raises(
        reasons.DriverError, match=r"unpacks to more than .*'lib/huge\.bin'"
    ) as info:
        inspect_tarball(bomb, ArchiveLimits(8 * 1024**3, MAX_MEMBERS))
    assert info.value.reason == reasons.UnsafeArchive


def test_an_archive_larger_than_the_free_space_is_refused(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    tar = header_only_tar(tmp_path / "big.tar.gz", "lib/big.bin", free + 1024**3)
    limits = ArchiveLimits(10**15, MAX_MEMBERS, free_space_of=tmp_path / "releases")
    with pytest.raises(reasons.DriverError, match="free for releases"):
        inspect_tarball(tar, limits)


def test_extraction_keeps_none_of_the_archive_s_privileges(tmp_path: Path) -> None:
    """What tarfile's `data` filter guarantees (and Python 3.11.2 lacks): no setuid/setgid/sticky,
    no group/other write, owner can read and write, no ownership from the archive."""

    def member(name: str, mode: int, uid: int = 4242) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = 2, mode, uid, uid
        info.uname = info.gname = "nobody-in-particular"
        return info

    tar = tmp_path / "modes.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.addfile(member("bin/suid", 0o6777), io.BytesIO(b"#!"))
        t.addfile(member("lib/data", 0o1666), io.BytesIO(b"ok"))
        t.addfile(member("lib/private", 0o000), io.BytesIO(b"ok"))
        d = tarfile.TarInfo("lib/dir")
        d.type, d.mode, d.uid = tarfile.DIRTYPE, 0o7777, 4242
        t.addfile(d)
    dest = tmp_path / "out"
    extract_tarball(tar, dest, LIMITS)
    modes = {p: (dest / p).stat().st_mode & 0o7777 for p in ("bin/suid", "lib/data", "lib/private")}
    assert modes == {"bin/suid": 0o755, "lib/data": 0o644, "lib/private": 0o600}
    assert (dest / "lib/dir").stat().st_mode & 0o7022 == 0
    for p in ("bin/suid", "lib/data", "lib/dir"):
        assert (dest / p).stat().st_uid == os.geteuid()


def test_nothing_is_written_through_a_symlink_already_on_disk(tmp_path: Path) -> None:
    """An earlier version (or a hand) left `lib/x -> elsewhere`: a later archive writing
    `lib/x/file` is refused rather than followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "root"
    (dest / "lib").mkdir(parents=True)
    (dest / "lib/x").symlink_to(elsewhere)
    tar = make_tar(tmp_path / "v2.tar.gz", [("lib/x/file", b"payload")])
    with pytest.raises(reasons.DriverError, match="not a directory"):
        extract_tarball(tar, dest, LIMITS, keep_existing=True)
    assert list(elsewhere.iterdir()) == []


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really")
    with pytest.raises(reasons.DriverError) as info:
        inspect_tarball(junk, LIMITS)
    assert info.value.reason == reasons.UnsafeArchive


def test_keep_existing_leaves_files_alone(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    (dest / "bin").mkdir(parents=True)
    (dest / "bin/hello").write_bytes(b"old")
    tar = make_tar(tmp_path / "v2.tar.gz", [("bin/hello", b"new"), ("bin/hello-0.2.0", b"v2")])
    extract_tarball(tar, dest, LIMITS, keep_existing=True)
    assert (dest / "bin/hello").read_bytes() == b"old"
    assert (dest / "bin/hello-0.2.0").read_bytes() == b"v2"


# --------------------------------------------------------------------------------- fetching


def artifact_for(path: Path, url: str | None = None, **kw: object) -> Artifact:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Artifact(url=url or path.as_uri(), sha256=sha, **kw)  # type: ignore[arg-type]


def cache_files(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob("*") if p.is_file()]


async def test_fetch_file_url_into_cache(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "a.tar.gz", [("x", b"1")])
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    art = artifact_for(src, size=src.stat().st_size)
    path = await store.fetch(art)
    assert path == store.path_for(art.sha256)
    assert path.read_bytes() == src.read_bytes()
    src.unlink()  # the second fetch is served by the cache
    assert await store.fetch(art) == path


async def test_checksum_mismatch_leaves_nothing_in_cache(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "a.tar.gz", [("x", b"1")])
    cache = tmp_path / "cache"
    store = ArtifactStore(ArtifactSettings(cache_dir=cache))
    bad = Artifact(url=src.as_uri(), sha256="0" * 64)
    with pytest.raises(reasons.TransientError) as info:
        await store.fetch(bad)
    assert info.value.reason == reasons.ChecksumMismatch
    assert cache_files(cache) == []


async def test_corrupted_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "a.tar.gz", [("x", b"1")])
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    art = artifact_for(src)
    path = await store.fetch(art)
    path.write_bytes(b"bitrot")
    assert (await store.fetch(art)).read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("size_delta", "reason"), [(-1, reasons.ArtifactTooLarge), (1, reasons.ArtifactUnavailable)]
)
async def test_spec_size_is_enforced(tmp_path: Path, size_delta: int, reason: str) -> None:
    src = make_tar(tmp_path / "a.tar.gz", [("x", b"1")])
    cache = tmp_path / "cache"
    store = ArtifactStore(ArtifactSettings(cache_dir=cache))
    with pytest.raises(reasons.DriverError) as info:
        await store.fetch(artifact_for(src, size=src.stat().st_size + size_delta))
    assert info.value.reason == reason
    assert cache_files(cache) == []


async def test_missing_file_and_bad_scheme(tmp_path: Path) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    with pytest.raises(reasons.TransientError) as info:
        await store.fetch(Artifact(url=(tmp_path / "nope.tar.gz").as_uri(), sha256="0" * 64))
    assert info.value.reason == reasons.ArtifactUnavailable
    with pytest.raises(reasons.DriverError, match="scheme"):
        await store.fetch(Artifact(url="ftp://example.invalid/x.tar.gz", sha256="0" * 64))


# ------------------------------------------------------------------------- over http (loopback)

BODY = b"0123456789" * 10_000


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok.tar.gz":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/truncated.tar.gz":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + 5000))
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        elif self.path == "/huge.tar.gz":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path == "/stream.tar.gz":  # no Content-Length: only the byte count can stop it
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def body_sha() -> str:
    return hashlib.sha256(BODY).hexdigest()


async def test_http_download(tmp_path: Path, http_base: str) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    path = await store.fetch(Artifact(url=f"{http_base}/ok.tar.gz", sha256=body_sha()))
    assert path.read_bytes() == BODY


@pytest.mark.parametrize(
    ("name", "reason", "max_bytes"),
    [
        ("truncated.tar.gz", reasons.ArtifactUnavailable, 10**9),
        ("huge.tar.gz", reasons.ArtifactTooLarge, 10**9),
        ("stream.tar.gz", reasons.ArtifactTooLarge, 50_000),
        ("missing.tar.gz", reasons.ArtifactUnavailable, 10**9),
    ],
)
async def test_http_failures_leave_nothing(
    tmp_path: Path, http_base: str, name: str, reason: str, max_bytes: int
) -> None:
    cache = tmp_path / "cache"
    store = ArtifactStore(ArtifactSettings(cache_dir=cache, max_bytes=max_bytes))
    with pytest.raises(reasons.DriverError) as info:
        await store.fetch(Artifact(url=f"{http_base}/{name}", sha256=body_sha()))
    assert info.value.reason == reason
    assert cache_files(cache) == []


async def test_unreachable_url(tmp_path: Path) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache", io_timeout=2))
    # Port 9 (discard) on loopback: nothing listens, the connect is refused at once.
    with pytest.raises(reasons.TransientError) as info:
        await store.fetch(Artifact(url="http://127.0.0.1:9/x.tar.gz", sha256="0" * 64))
    assert info.value.reason == reasons.ArtifactUnavailable


async def test_credentials_never_reach_messages(tmp_path: Path, http_base: str) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    url = http_base.replace("http://", "http://user:hunter2@") + "/missing.tar.gz?token=abc"
    with pytest.raises(reasons.DriverError) as info:
        await store.fetch(Artifact(url=url, sha256="0" * 64))
    assert "hunter2" not in str(info.value)
    assert "token" not in str(info.value)
