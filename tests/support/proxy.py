"""A TCP proxy that a test can take down and bring back, to simulate a
database outage for the processes that connect through it (or a service's
outage, for gRPC clients), or stall: connections accepted, never answered."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit

from crm_runtime.stack import free_port


class ToggleProxy:
    def __init__(self, upstream_dsn: str) -> None:
        parts = urlsplit(upstream_dsn)
        query = parse_qs(parts.query)
        self._unix = f"{query['host'][0]}/.s.PGSQL.5432" if "host" in query else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5432
        self.port = free_port()
        user = parts.username or "postgres"
        self.dsn = urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: Hold new connections open without forwarding a byte (a server that
        #: accepts and never answers).
        self.stalled = False

    def retarget(self, port: int, host: str = "127.0.0.1") -> None:
        """Forward new connections to ``host:port`` (a server started after
        the proxy, whose clients needed the proxy's port first)."""
        self._unix, self._host, self._port = None, host, port

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stalled:
            self._writers.add(writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass  # swallowed: the client waits for an answer that never comes
            self._writers.discard(writer)
            writer.close()
            return
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
