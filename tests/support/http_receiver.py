"""A real HTTP server for tests of outgoing HTTP (webhooks): it records every
request (method, path, headers, body) and answers as the test scripts it.

::

    with Receiver() as hook:
        hook.answer(Answer(500), Answer(500))      # the next two requests, then 200
        hook.on("/moved", Answer(307, headers={"location": "/final"}))
        ... point the system at hook.url ...
        [first, second, third] = await hook.wait_for(3)

Answers come from the request path's own queue (:meth:`Receiver.on`), then
the shared queue (:meth:`Receiver.answer`), then :attr:`Receiver.default`
(200). An answer may wait ``delay`` seconds first (longer than the client's
time limit: a timeout) or ``hold`` until :meth:`Receiver.release` (an
endpoint that hangs). A request is recorded when it arrives, before it is
answered. The server is ``http.server.ThreadingHTTPServer`` on 127.0.0.1, in
a thread of its own; :meth:`Receiver.close` releases what it holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

#: Longest a held or delayed answer waits (a test that forgets to release).
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Wait until :meth:`Receiver.release` (or close) before answering.
    hold: bool = False


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    #: Header names in lower case (a repeated header: the last value).
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP endpoint for one test; a context manager."""

    def __init__(self) -> None:
        self.default = Answer()
        self._lock = threading.Lock()
        self._queue: deque[Answer] = deque()
        self._routes: dict[str, deque[Answer]] = {}
        self._received: list[Received] = []
        self._released = threading.Event()
        self._closed = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return self.url_for("/hook")

    def url_for(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests (of any path without a queue of its own) so."""
        with self._lock:
            self._queue.extend(answers)

    def on(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` so (the last one for good)."""
        with self._lock:
            self._routes.setdefault(path, deque()).extend(answers)

    def release(self) -> None:
        """Let held answers go (and answers held later go at once)."""
        self._released.set()

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    async def wait_for(self, count: int, *, path: str | None = None, timeout: float = 30.0,
                       where: Callable[[Received], bool] | None = None) -> list[Received]:
        """The requests (to ``path``, matching ``where``) once there are
        ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.requests(path) if where is None or where(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {count} requests "
                                     f"to {path or 'the receiver'}; got {len(found)}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- the server's side ---------------------------------------------------------

    def _arrived(self, request: Received) -> Answer:
        with self._lock:
            self._received.append(request)
            route = self._routes.get(request.path)
            if route:
                return route.popleft() if len(route) > 1 else route[0]
            return self._queue.popleft() if self._queue else self.default

    def _wait(self, answer: Answer) -> None:
        if answer.hold:
            self._released.wait(MAX_WAIT_S)
        if answer.delay:
            self._closed.wait(min(answer.delay, MAX_WAIT_S))


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = receiver._arrived(Received(self.command, path, headers, body,
                                                time.monotonic()))
            receiver._wait(answer)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its time limit)

        do_POST = do_GET = do_PUT = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
