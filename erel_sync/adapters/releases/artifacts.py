"""Release tarballs: fetch into a content-addressed cache and verify them.

Called by the release driver (`adapters.releases.driver`) before any install or upgrade. Lives in
`adapters` because it does network and disk I/O; stdlib only (urllib in a worker thread).
Unpacking is `adapters.releases.archive`.

Guarantee: the cache holds only verified files: `cache_dir/sha256/<hex>.tar.gz` appears (by
rename) only after its sha256 matched. A mismatch, a truncated or oversized download leaves
nothing there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from erel_sync.adapters.store import fsync_dir
from erel_sync.core import reasons
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
