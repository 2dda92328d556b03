"""Python's TLS in front of the gRPC server, for the one mode gRPC cannot
serve: a client certificate verified if presented, not required (see
`nodemesh.xds.server.tls`).

The front terminates TLS on the TCP address (CERT_OPTIONAL against the
client CA, ALPN h2) and copies bytes both ways to the gRPC server, which
listens without TLS on a Unix socket in a private 0700 directory only this
process can reach. Costs: one copy of every byte through the event loop,
and gRPC sees every such client as the Unix peer "unix:" (status shows
that instead of the client's address).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import tempfile
from pathlib import Path

import structlog

from nodemesh.xds.server.errors import ServerConfigError

log = structlog.get_logger("nodemesh.xds.server")

_CHUNK = 256 * 1024
_HANDSHAKE_TIMEOUT = 10.0


class TlsFront:
    """TLS listener that forwards each connection to `backend`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._dir = Path(tempfile.mkdtemp(prefix="nm-xds-"))  # mode 0700
        self.backend = self._dir / "grpc.sock"
        self._server: asyncio.Server | None = None
        # Forwarded connections: both ends, closed on `close()` so that the
        # handler tasks end on their own (a cancelled handler task makes
        # asyncio's stream machinery log an error).
        self._open: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        self._done: asyncio.Event = asyncio.Event()
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the bound port."""
        try:
            self._server = await asyncio.start_server(
                self._connection,
                host,
                port,
                ssl=self._context,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
            )
        except OSError as exc:
            raise ServerConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def stop_accepting(self) -> None:
        """No new connections; forwarded ones go on (the gRPC server drains
        its streams through them)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        """Stop accepting, end forwarded connections, remove the socket dir."""
        self.stop_accepting()
        for client, backend in list(self._open.items()):
            # abort, not close: a TLS close waits for the peer's close_notify
            client.transport.abort()
            backend.transport.abort()
        if self._open:
            self._done.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                    await self._done.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.backend)
        except OSError as exc:
            log.warning("xds_tls_front_backend_unreachable", error=str(exc))
            writer.close()
            return
        self._open[writer] = up_writer
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(reader, up_writer), name="tls-front-up")
                group.create_task(_pump(up_reader, writer), name="tls-front-down")
        except* (OSError, ssl.SSLError):
            pass  # a peer went away: both sides are closed below
        finally:
            for side in (writer, up_writer):
                side.close()
            self._open.pop(writer, None)
            if not self._open:
                self._done.set()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then close the other side (HTTP/2 needs no half-close)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
