"""A fast local webhook receiver, run as a process of its own
(``python -m bench.receiver``): an asyncio HTTP/1.1 server with keep-alive
that answers every ``POST`` with ``204 No Content`` and counts it.

The ``loyalty.webhooks`` workload points the product's webhook at it and
then posts the same requests to it with a bare HTTP client, so both sides
pay the same receiver. It is built to cost little per request (an
``asyncio.Protocol`` and a small parser, no framework), so the figures are
the sender's, and it runs outside the bench process, so neither sender
shares its event loop.

Counting: per request path (the product posts to one, the baseline to
another), the requests, the distinct deliveries (by ``webhook-id``, else
``ce-id``), the duplicates (an id seen before on that path) and the
requests with neither header. ``GET /stats`` answers them as JSON.

It prints ``PORT <n>`` on its first line of output once it listens on
127.0.0.1 (port 0 asks the kernel for a free one) and stops on SIGTERM or
SIGINT. Only what a bench client sends is understood: a body is announced
by ``Content-Length`` (chunked bodies get ``411`` and the connection closes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Largest request head or body accepted (the product's bodies are a few KiB).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


class BadRequest(Exception):
    """The bytes are not a request this receiver understands: answer
    ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    #: Header names in lower case (a repeated header: the last value).
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class RequestParser:
    """Splits a connection's bytes into requests: :meth:`feed` what arrived,
    get every request it completed (a request split over several reads
    comes out once its last byte arrived)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: The head of a request whose body is still arriving, and its length.
        self._head: tuple[str, str, dict[str, str]] | None = None
        self._length = 0

    def feed(self, data: bytes) -> list[Request]:
        self._buffer += data
        out: list[Request] = []
        while True:
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        raise BadRequest(431, "request head too large")
                    return out
                self._head = _parse_head(bytes(self._buffer[:end]))
                del self._buffer[:end + 4]
                self._length = _body_length(self._head[2])
            if len(self._buffer) < self._length:
                return out
            method, path, headers = self._head
            out.append(Request(method, path, headers, bytes(self._buffer[:self._length])))
            del self._buffer[:self._length]
            self._head = None


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes every byte)
        raise BadRequest(400, "undecodable head") from None
    line, *lines = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line {line!r}")
    headers: dict[str, str] = {}
    for raw in lines:
        name, colon, value = raw.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {raw!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


def _body_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(411, "only Content-Length bodies are understood")
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise BadRequest(400, f"bad Content-Length {raw!r}")
    length = int(raw)
    if length > MAX_BODY:
        raise BadRequest(413, "body too large")
    return length


@dataclass
class PathCounts:
    """What one path received."""

    requests: int = 0
    duplicates: int = 0
    without_id: int = 0
    ids: set[str] = field(default_factory=set)

    def count(self, request: Request) -> None:
        self.requests += 1
        delivery = request.headers.get("webhook-id") or request.headers.get("ce-id")
        if not delivery:
            self.without_id += 1
        elif delivery in self.ids:
            self.duplicates += 1
        else:
            self.ids.add(delivery)

    def as_json(self) -> dict[str, int]:
        return {"requests": self.requests, "distinct": len(self.ids),
                "duplicates": self.duplicates, "without_id": self.without_id}


@dataclass
class Counts:
    """Every path's counts."""

    paths: dict[str, PathCounts] = field(default_factory=dict)

    def count(self, request: Request) -> None:
        counts = self.paths.get(request.path)
        if counts is None:
            counts = self.paths[request.path] = PathCounts()
        counts.count(request)

    def stats(self) -> bytes:
        return json.dumps({p: c.as_json() for p, c in self.paths.items()}).encode()


def answer(status: int, body: bytes = b"", *, close: bool = False,
           content_type: str = "application/json") -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed",
               411: "Length Required", 413: "Content Too Large",
               431: "Request Header Fields Too Large"}
    head = (f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


class Connection(asyncio.Protocol):
    """One client connection: parse, count, answer, in arrival order."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts
        self._parser = RequestParser()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            requests = self._parser.feed(data)
        except BadRequest as exc:
            transport.write(answer(exc.status, exc.reason.encode(), close=True,
                                   content_type="text/plain"))
            transport.close()
            return
        out = []
        for request in requests:
            close = not request.keep_alive
            if request.method == "POST":
                self._counts.count(request)
                out.append(NO_CONTENT_CLOSE if close else NO_CONTENT)
            elif request.method == "GET" and request.path == "/stats":
                out.append(answer(200, self._counts.stats(), close=close))
            else:
                out.append(answer(405, b"", close=close))
            if close:
                break
        transport.write(b"".join(out))
        if requests and not requests[-1].keep_alive:
            transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts()
    server = await loop.create_server(lambda: Connection(counts), "127.0.0.1", port,
                                      backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await stop.wait()


class ReceiverProcess:
    """The receiver as the bench runs it: a child process, its address, its
    counts and its CPU."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self, timeout: float = 30.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.receiver", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        if not line.startswith(b"PORT "):
            await self.stop()
            raise RuntimeError(f"receiver: did not start ({line!r})")
        self.port = int(line.split()[1])

    async def stats(self) -> dict[str, dict[str, int]]:
        """Counts by path (see the module doc)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /stats HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"receiver: /stats answered {head[:40]!r}")
        stats: dict[str, Any] = json.loads(body)
        return stats

    def check_running(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            raise RuntimeError(f"receiver: exited with {self._proc.returncode}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
