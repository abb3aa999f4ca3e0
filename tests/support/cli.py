"""Run the real ``crm`` command (``python -m crm_app``) as a subprocess:
one-shot commands, and ``crm up`` as a long-running job whose output a test
reads with deadlines and which it stops with Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev dependencies

from crm_runtime.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
CRM = (sys.executable, "-m", "crm_app")
_CONNECTIONS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")


def crm_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any CRM setting (pydantic-settings
    matches names case-insensitively), plus ``CRM_DATA_DIR`` and ``settings``."""
    env = {name: value for name, value in os.environ.items()
           if not (name.upper().startswith("CRM_") or name.upper() in _CONNECTIONS)}
    env |= {"CRM_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    return env | settings


@dataclass(frozen=True, repr=False)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:  # what a failed assertion shows
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


async def run_crm(*args: str, env: Mapping[str, str], timeout: float = 60.0) -> Result:
    """Run ``crm <args>`` to completion (killed and failed after ``timeout``)."""
    proc = await asyncio.create_subprocess_exec(
        *CRM, *args, cwd=ROOT, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"crm {' '.join(args)} still running after {timeout}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def free_port_block(size: int, avoid: frozenset[int] = frozenset()) -> int:
    """A base port with ``size`` consecutive free ports (none in ``avoid``),
    low enough for the settings' ``le=65000`` bound."""
    for _ in range(100):
        base = free_port()
        block = range(base, base + size)
        if base + size > 65000 or avoid & set(block):
            continue
        if all(_bindable(port) for port in block):
            return base
    raise AssertionError(f"no block of {size} free ports found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Banner:
    """What ``crm up`` prints once everything is started."""

    lines: list[str]
    broker: str
    database: str
    dev_token: str | None

    @classmethod
    def parse(cls, lines: list[str]) -> Banner:
        text = "\n".join(lines)

        def field(label: str) -> str | None:
            match = re.search(rf"^\s+{label}\s+(\S+)", text, re.MULTILINE)
            return match.group(1) if match else None

        broker, database = field("broker"), field("database")
        assert broker and database, f"no broker or database address in:\n{text}"
        return cls(lines=lines, broker=broker, database=database, dev_token=field("dev token"))


class CrmUp:
    """A running ``crm up``, in a process group of its own as a terminal job is,
    so that :meth:`interrupt` can press Ctrl-C without reaching pytest."""

    READY = "Ctrl-C stops everything."

    def __init__(self, proc: asyncio.subprocess.Process, data_dir: Path, stderr: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir.resolve()
        self.stderr = stderr
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}
        self._more = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: Mapping[str, str], data_dir: Path, stderr: Path,
                    *services: str) -> CrmUp:
        """``crm up [services...]`` (default: all)."""
        with stderr.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *CRM, "up", *services, cwd=ROOT, env=dict(env), stdout=asyncio.subprocess.PIPE,
                stderr=err, start_new_session=True)
        return cls(proc, data_dir, stderr)

    async def _read(self) -> None:
        """Keep draining stdout (the services inherit it too) into ``lines``."""
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._more.set()
        self._more.set()

    def output(self) -> str:
        tail = self.stderr.read_text(errors="replace")[-4000:]
        return "\n".join(["--- stdout", *self.lines, "--- stderr (tail)", tail])

    async def wait_ready(self, timeout: float) -> Banner:
        """Read stdout until the ready line; fail at ``timeout`` or on exit."""
        deadline = time.monotonic() + timeout
        while self.READY not in self.lines:
            if self._reader.done():
                raise AssertionError(f"crm up ended before it was ready\n{self.output()}")
            self._more.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"crm up not ready after {timeout}s\n{self.output()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._more.wait(), remaining)
        return Banner.parse(self.lines[: self.lines.index(self.READY) + 1])

    def stack_processes(self) -> list[psutil.Process]:
        """Every process of this stack now running: the descendants of ``crm up``
        (services, Tansu) and those naming the data dir (PostgreSQL, which
        pg_ctl daemonizes) with their children. Remembered in ``seen``."""
        found: list[psutil.Process] = []
        if self.proc.returncode is None:  # else the pid may be another process's
            with contextlib.suppress(psutil.NoSuchProcess):
                found += psutil.Process(self.proc.pid).children(recursive=True)
        inside = (str(self.data_dir), f"{self.data_dir}/")
        for proc in psutil.process_iter(["cmdline"]):
            cmdline: list[str] = proc.info["cmdline"] or []
            if any(part == inside[0] or part.startswith(inside[1]) for part in cmdline):
                found.append(proc)
                with contextlib.suppress(psutil.NoSuchProcess):
                    found += proc.children(recursive=True)
        self.seen |= {p.pid: p for p in found}
        return found

    def process_names(self) -> set[str]:
        """Names of the stack's processes now running."""
        return {_name(p) for p in self.stack_processes()} - {"?"}

    def leftovers(self) -> list[str]:
        """The stack's processes still alive, as readable descriptions."""
        alive = [p for p in [*self.seen.values(), *self.stack_processes()] if _alive(p)]
        return sorted({f"{p.pid} {_describe(p)}" for p in alive})

    def service_process(self, name: str) -> psutil.Process:
        """The ``crm serve <name>`` child."""
        for child in psutil.Process(self.proc.pid).children():
            if child.cmdline()[-2:] == ["serve", name]:
                return child
        raise AssertionError(f"no `serve {name}` child of crm up\n{self.output()}")

    async def wait_exit(self, timeout: float, after: str = "") -> int:
        """The exit code, once stdout is closed too; fails after ``timeout``."""
        self.stack_processes()
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._reader, timeout)
        except TimeoutError:
            raise AssertionError(f"crm up still running {timeout}s {after}\n"
                                 f"{self.output()}") from None
        return code

    async def interrupt(self, timeout: float) -> int:
        """Press Ctrl-C (SIGINT to the job's process group); the exit code."""
        self.stack_processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        return await self.wait_exit(timeout, after="after Ctrl-C")

    async def kill(self) -> None:
        """Tear-down after a failed test: stop the job and whatever it left."""
        if self.proc.returncode is None:
            with contextlib.suppress(AssertionError):
                await self.interrupt(30)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._reader.cancel()
        alive = [p for p in self.seen.values() if _alive(p)]
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, still = psutil.wait_procs(alive, timeout=10)
        for proc in still:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:  # gone meanwhile, e.g. a PostgreSQL backend
        return "?"


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"
