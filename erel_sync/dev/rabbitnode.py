"""A private RabbitMQ node: start, probe, stop, kill and restart one broker for tests and `dev`.

Called by the test plugin (`tests/rabbit.py`) and `dev.cluster`: tooling that spawns and signals
processes and opens sockets. Its `rabbitmqctl` calls go through `adapters.broker.rabbitctl`.

Everything the node reads or writes lives under one work directory: a `HOME` holding a 0400
`.erlang.cookie` (the server and `rabbitmqctl`/`erl_call` share it), the Mnesia/stream data,
logs, `rabbitmq.conf`, an enabled-plugins file holding `[].` and an empty conf-env file that keeps
`/etc/rabbitmq/rabbitmq-env.conf` out. The node gets its own name (`<name>@localhost`), a free
AMQP port and a free distribution port, and listens on 127.0.0.1 only, so it never meets the
host's shared broker (node `rabbit`, port 5672).

The server runs in the foreground in a new session (our child: a failed boot is seen at once
as an exit, not the silent failure `-detached` gives on a name clash). Readiness is proven
twice: the AMQP listener answers `connection.start` with our unique `cluster_name` (a stranger
on the port cannot fool us), then `rabbit:is_running()` over `erl_call` says `true`.

Blocking calls (subprocess, sockets): from async code run `start`/`stop`/`restart` in a thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path
from types import TracebackType

from erel_sync.adapters.broker import rabbitctl
from erel_sync.dev.probes import (
    LOCAL_HOST,
    alive,
    amqp_server_properties,
    children,
    epmd_names,
    exited,
    free_port,
    killpg,
    port_open,
    tail,
)
from erel_sync.dev.tlsca import TlsListener

# Tests and tools import these from here too.
__all__ = [
    "SERVER_BIN_DIR",
    "RabbitNode",
    "RabbitNodeError",
    "TlsListener",
    "epmd_names",
    "free_port",
    "port_open",
]

SERVER_BIN_DIR = Path("/usr/lib/rabbitmq/bin")

# Variables kept from the caller: anything else (ERL_*, RABBITMQ_*) would change the node.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR")
_POLL = 0.05
_LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"


class RabbitNodeError(Exception):
    """The node could not be started, reached or stopped; the message carries a log tail."""


class RabbitNode:
    """One private RabbitMQ node whose files all live under `work_dir`.

    Ports are chosen on the first start and kept, so `url` stays valid across `restart()` and
    `kill()` + `start()`, and clients can reconnect to the same address.
    """

    def __init__(
        self,
        work_dir: Path,
        name: str | None = None,
        *,
        amqp_port: int | None = None,
        dist_port: int | None = None,
        bin_dir: Path = SERVER_BIN_DIR,
        listen: tuple[str, ...] = (),
        cookie: str | None = None,
        cluster_name: str | None = None,
        tls: TlsListener | None = None,
        erl_args: str = "",
    ) -> None:
        short = (name or f"erelsync-{secrets.token_hex(4)}").split("@", 1)[0]
        if not short or short == "rabbit" or not all(c.isalnum() or c in "-_" for c in short):
            raise ValueError(f"bad node name {name!r}: letters, digits, '-' and '_', not 'rabbit'")
        self.short_name = short
        self.node_name = f"{short}@localhost"
        self.work_dir = Path(work_dir).resolve()
        self.home = self.work_dir / "home"
        self.log_file = self.work_dir / "log" / f"{self.node_name}.log"
        self.console_file = self.work_dir / "console.log"
        self.amqp_port = amqp_port or 0
        self.dist_port = dist_port or 0
        self.bin_dir = bin_dir
        # Hosts of their own (network namespaces) reach it on these addresses too, as guest:
        # the machine's own address on their bridge, never every address of the machine.
        self.listen = listen
        # Members of one cluster (dev.rabbitcluster) share the cookie and the cluster name:
        # a node that joined a cluster announces the cluster's name, not its own.
        self.cookie = cookie
        self.cluster_name = cluster_name or self.node_name
        self.tls, self.tls_port, self.erl_args = tls, 0, erl_args
        self.host = LOCAL_HOST  # where clients and the boot probe reach it
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- addresses ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.amqp_port:
            raise RabbitNodeError("the node has no port yet: start() it first")
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}/"

    @property
    def tls_url(self) -> str:
        """The amqps listener, by the name its certificate carries (`localhost`)."""
        if not self.tls_port:
            raise RabbitNodeError("the node has no TLS listener")
        return f"amqps://guest:guest@localhost:{self.tls_port}/"

    @property
    def pid(self) -> int | None:
        """The Erlang VM (beam.smp) of the running node, None when it is not running."""
        return self._pid if self._pid is not None and alive(self._pid) else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not exited(self._proc.pid)

    # -- lifecycle ------------------------------------------------------------------------------

    def command(self, *argv: str) -> list[str]:
        return list(argv)  # dev.rabbitnetns runs it inside a network namespace

    def start(self, timeout: float = 60) -> None:
        """Boot the node and return once it accepts AMQP; raise RabbitNodeError otherwise."""
        if self.running:
            raise RabbitNodeError(f"{self.node_name} is already running (pid {self.pid})")
        self._prepare()
        names = epmd_names()
        if names is not None and self.short_name in names:
            raise RabbitNodeError(
                f"node name {self.short_name!r} is already registered with epmd "
                f"(port {names[self.short_name]}): another node uses it"
            )
        if port_open(self.amqp_port):
            raise RabbitNodeError(f"AMQP port {self.amqp_port} is already in use")
        with self.console_file.open("ab") as console:
            self._proc = subprocess.Popen(
                self.command(str(self.bin_dir / "rabbitmq-server")),
                env=self.env(),
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a failed boot is swept with killpg
            )
        try:
            self._await_boot(time.monotonic() + timeout)
        except BaseException:
            self._sweep(graceful=False, timeout=10)
            raise

    def stop(self, timeout: float = 30) -> None:
        """Graceful `rabbitmqctl stop`; kill the VM if it lingers; return once all is gone."""
        if self._proc is None:
            return
        self._sweep(graceful=True, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the VM (a crash, for fault tests); data stays for the next start()."""
        if self._proc is not None:
            self._sweep(graceful=False, timeout=10)

    def restart(self, timeout: float = 60) -> None:
        """Stop (if running) and start again with the same name, ports and data."""
        self.stop()
        self.start(timeout=timeout)

    def __enter__(self) -> RabbitNode:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- talking to the node ----------------------------------------------------------------------

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run `rabbitmqctl -n <node> ARGS` against this node; return stdout.

        `stdin` feeds commands that read a secret from standard input (`add_user NAME`).
        """
        return rabbitctl.run(
            str(self.bin_dir / "rabbitmqctl"),
            *args,
            node=self.node_name,
            env=self.env(),
            stdin=stdin,
            timeout=timeout,
            error=RabbitNodeError,
        )

    def eval(self, expr: str, timeout: float = 30) -> str:
        """Evaluate Erlang expressions on the node through `erl_call` (ms, where ctl takes ~0.7 s).

        Returns the printed result term; raises RabbitNodeError when the node is unreachable or
        the expressions raise.
        """
        erl_call = self._erl_call()
        if erl_call is None:
            raise RabbitNodeError("erl_call not found (package erlang-base)")
        text = expr.strip()
        if not text.endswith("."):
            text += "."
        try:
            done = subprocess.run(
                [erl_call, "-R", "-sname", self.node_name, "-e"],
                env=self.env(),
                input=(text + "\n").encode(),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RabbitNodeError(f"erl_call to {self.node_name} failed: {e}") from e
        out = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0 or not out.startswith("{ok,"):
            err = done.stderr.decode(errors="replace").strip()
            raise RabbitNodeError(f"eval on {self.node_name} failed: {(out or err)[-2000:]}")
        return out[len("{ok,") : -1].strip()

    def _erl_call(self) -> str | None:
        return shutil.which("erl_call", path=self.env()["PATH"])

    def log_tail(self, lines: int = 40) -> str:
        parts = [
            f"--- {path.name} ---\n{text}"
            for path in (self.console_file, self.log_file)
            if (text := tail(path, lines))
        ]
        if (self.work_dir / "erl_crash.dump").exists():
            parts.append(f"--- an erl_crash.dump is in {self.work_dir} ---")
        return "\n".join(parts) or "(no log output)"

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if self.cookie is not None and cookie.exists() and cookie.read_text() != self.cookie:
            cookie.unlink()  # a cluster's cookie replaces one from an earlier run
        if not cookie.exists():
            alphabet = string.ascii_uppercase
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(self.cookie or "".join(secrets.choice(alphabet) for _ in range(32)))
        if not self.amqp_port:
            self.amqp_port = free_port()
        while not self.dist_port or self.dist_port == self.amqp_port:
            self.dist_port = free_port()
        while self.tls is not None and self.tls_port in (0, self.amqp_port, self.dist_port):
            self.tls_port = free_port()
        (self.work_dir / "enabled_plugins").write_text("[].\n")
        (self.work_dir / "rabbitmq-env.conf").write_text("# kept empty on purpose\n")
        (self.work_dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    # The AMQP probe recognises our node by this name in connection.start.
                    f"cluster_name = {self.cluster_name}",
                    "log.console = false",
                    "log.file.level = info",
                    # Test machines often have little disk; the default 50 MB alarm would
                    # block publishers and turn into flaky timeouts.
                    "disk_free_limit.absolute = 10MB",
                    *(
                        f"listeners.tcp.{i} = {addr}:{self.amqp_port}"
                        for i, addr in enumerate((LOCAL_HOST, *self.listen), 1)
                    ),
                    *(["loopback_users.guest = false"] if self.listen else []),
                    *(self.tls.config(LOCAL_HOST, self.tls_port) if self.tls else []),
                    "",
                ]
            )
        )

    def env(self) -> dict[str, str]:
        """The environment `rabbitmqctl`/`erl_call` need to reach this node (HOME: the cookie)."""
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        w = self.work_dir
        env.update(
            {
                "HOME": str(self.home),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
                "RABBITMQ_LOG_BASE": str(w / "log"),
                "RABBITMQ_LOGS": str(self.log_file),
                "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
                "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"{_LOOPBACK_DIST} {self.erl_args}".strip(),
                # CLI tools listen for distribution too; the default 35672-35682 range is shared
                # by every rabbitmqctl on the host, so let the kernel pick a port instead.
                "RABBITMQ_CTL_DIST_PORT_MIN": "0",
                "RABBITMQ_CTL_DIST_PORT_MAX": "0",
                "ERL_CRASH_DUMP": str(w / "erl_crash.dump"),
            }
        )
        return env

    def _fail(self, why: str) -> RabbitNodeError:
        return RabbitNodeError(
            f"{self.node_name} (AMQP port {self.amqp_port}): {why}\n{self.log_tail()}"
        )

    def _await_boot(self, deadline: float) -> None:
        assert self._proc is not None
        token = self.cluster_name.encode()
        while True:
            if exited(self._proc.pid):
                raise self._fail("rabbitmq-server exited during boot")
            props = amqp_server_properties(self.amqp_port, self.host)
            if props:
                if token not in props:
                    raise self._fail(f"another AMQP server answers on port {self.amqp_port}")
                break
            if time.monotonic() > deadline:
                raise self._fail("did not accept AMQP before the deadline")
            time.sleep(_POLL)
        # The listener opens near the end of boot; wait until the app reports it is running.
        if self._erl_call() is None:
            left = max(1, int(deadline - time.monotonic()))
            self.ctl("await_startup", "--timeout", str(left), timeout=left + 10)
        while self._erl_call() is not None:
            with contextlib.suppress(RabbitNodeError):
                if self.eval("rabbit:is_running().", timeout=5) == "true":
                    break
            if exited(self._proc.pid) or time.monotonic() > deadline:
                raise self._fail("AMQP is up but rabbit:is_running() never said true")
            time.sleep(_POLL)
        self._pid = next(iter(children(self._proc.pid)), None)

    def _sweep(self, *, graceful: bool, timeout: float) -> None:
        """Bring the node down and reap everything it started; the data dir stays."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        vm = self._pid if self._pid is not None and alive(self._pid) else None
        # Never reap before the sweep below (no poll()/wait()): while the wrapper shell is an
        # unreaped zombie, its pid (our process group id) cannot be reused by anyone else.
        if exited(proc.pid):
            pass
        elif graceful:
            try:
                self.ctl("stop", timeout=max(1.0, timeout / 2))
            except RabbitNodeError:
                if vm is not None:
                    os.kill(vm, signal.SIGTERM)  # RabbitMQ treats SIGTERM as `stop`
                else:
                    killpg(proc.pid)
        elif vm is not None:
            os.kill(vm, signal.SIGKILL)
        else:
            killpg(proc.pid)  # boot failed before we knew the VM's pid
        # The wrapper shell exits once the VM has.
        while not exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        # erl_child_setup, inet_gethost and, after a timeout, the VM itself.
        killpg(proc.pid)
        proc.wait(timeout=10)
        self._proc = None
        self._pid = None
        while time.monotonic() < deadline + 5:
            names = epmd_names() or {}
            if self.short_name not in names and not port_open(self.amqp_port):
                return
            time.sleep(_POLL)
        raise RabbitNodeError(f"{self.node_name} still listed by epmd or port still open")
