"""The driver's record in each release root: what it installed, for whom, and what it was doing.

Called by `adapters.releases.driver` only. Lives in `adapters` because it writes files. Every write
is atomic (tmp + fsync + rename + fsync of the directory): a crash leaves the old or the new record,
never a torn one.

Layout of a managed release root (`releases_dir/<name>/`):
    bin/ erts-*/ lib/ releases/        the relx release; release_handler keeps versions side by
                                       side (`lib/<app>-<vsn>`, `releases/<vsn>/`)
    log/                               run_erl logs (`erlang.log.N`)
    .erel-sync/release.json            this record: the marker that the agent owns the root
    .erel-sync/home/.erlang.cookie     the node's cookie (0400); HOME of the node and erl_call
    .erel-sync/pipe/                   run_erl's pipes (`to_erl .erel-sync/pipe/` attaches)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from erel_sync.adapters import store
from erel_sync.adapters.store import fsync_dir
from erel_sync.core import reasons

FORMAT = 1
PRIVATE_DIR = ".erel-sync"
RECORD = "release.json"
COOKIE_CHARS = 32


@dataclass
class ReleaseMeta:
    release: str
    host_id: str
    node: str  # full node name, `name@host`
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # vsn -> {sha256, ...}
    health: dict[str, Any] = field(default_factory=dict)  # HealthSpec fields, for start(name)
    stop_timeout: float = 30.0
    pending: dict[str, Any] | None = None  # {op, mode, from, to, since}: a step not finished
    os_pid: int | None = None  # the node's pid as last seen; checked against /proc before use
    last_result: dict[str, Any] | None = None
    format: int = FORMAT
    managed_by: str = "erel-sync"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReleaseMeta:
        if doc.get("managed_by") != "erel-sync" or doc.get("format") != FORMAT:
            raise ValueError("not an erel-sync release record")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def private_dir(root: Path) -> Path:
    return root / PRIVATE_DIR


def home_dir(root: Path) -> Path:
    return root / PRIVATE_DIR / "home"


def cookie_path(root: Path) -> Path:
    return home_dir(root) / ".erlang.cookie"


def next_cookie_path(root: Path) -> Path:
    """A clustered release's cookie, rendered: it replaces `.erlang.cookie` at the next boot
    (the running node, and the agent's calls to it, keep the old one until then)."""
    return private_dir(root) / "cookie.next"


def stage_cookie(root: Path, value: str) -> bool:
    """Render a clustered release's shared cookie for its next boot (0400); True when it is not
    the cookie the node has now (a restart must apply it)."""
    try:
        current = cookie_path(root).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        current = None
    path = next_cookie_path(root)
    if current == value:
        path.unlink(missing_ok=True)
        return False
    store.write_atomic(path, value.encode("ascii"), mode=0o400)
    return True


def pipe_dir(root: Path) -> Path:
    return root / PRIVATE_DIR / "pipe"


def log_dir(root: Path) -> Path:
    return root / "log"


def load_meta(root: Path) -> ReleaseMeta | None:
    """The record, or None when the root is absent or not ours (no or foreign record)."""
    path = private_dir(root) / RECORD
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return ReleaseMeta.from_json(doc)
    except (TypeError, ValueError):
        return None


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`store.write_atomic` (tmp + fsync + rename + fsync dir), failures as DriverError."""
    try:
        store.write_atomic(path, data, mode)
    except store.StoreError as exc:
        raise reasons.driver_error(reasons.InstallFailed, str(exc)) from exc


def save_meta(root: Path, meta: ReleaseMeta) -> None:
    private_dir(root).mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(meta.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
    write_atomic(private_dir(root) / RECORD, data)


def create_private_dirs(root: Path) -> Path:
    """The private dir and home (0700) with a fresh random cookie (0400) and the pipe dir;
    returns the cookie path. An existing cookie is kept (the running node knows only that one)
    but its mode is set again, and modes are set explicitly, not left to the umask or to what
    was there: this directory is the node's identity."""
    home = home_dir(root)
    for d in (private_dir(root), home, pipe_dir(root)):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if d.is_symlink() or not d.is_dir():
            raise reasons.driver_error(reasons.InstallFailed, f"{d} is not a directory")
        os.chmod(d, 0o700)
    log_dir(root).mkdir(parents=True, exist_ok=True)
    cookie = cookie_path(root)
    if cookie.is_dir() and not cookie.is_symlink():
        shutil.rmtree(cookie)
    elif cookie.is_symlink() or (cookie.exists() and not cookie.is_file()):
        cookie.unlink()  # never a cookie read through a link
    staged = next_cookie_path(root)
    if staged.is_file() and not staged.is_symlink():
        os.chmod(staged, 0o400)
        os.replace(staged, cookie)  # a clustered release's shared cookie, from its config
        fsync_dir(home)
    if cookie.exists():
        os.chmod(cookie, 0o400)
        return cookie
    value = "".join(secrets.choice(string.ascii_uppercase) for _ in range(COOKIE_CHARS))
    tmp = home / f".cookie.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cookie)
    fsync_dir(home)
    return cookie


def now() -> float:
    return round(time.time(), 3)
