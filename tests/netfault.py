"""A TCP proxy on 127.0.0.1 that a test can cut off: calls through it hang, as in a network partition.

async with TcpProxy("127.0.0.1", redis_port) as proxy:
    client = Redis.from_url(proxy.url)
    proxy.blackhole()         # nothing more is forwarded either way: calls hang, nothing errors
    proxy.drop_connections()  # reset every connection open now (data held back is discarded)
    proxy.refuse()            # Redis is down: every connection, open or new, is reset at once
    proxy.restore()           # forward again
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit

_CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.port = 0

    @classmethod
    def in_front_of(cls, redis_url: str) -> TcpProxy:
        parts = urlsplit(redis_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions. New connections are accepted and then hear nothing."""
        self._flowing.clear()

    def refuse(self) -> None:
        """As if the server were down: reset every open connection and each new one as it comes."""
        self._refusing = True
        self.drop_connections()

    def restore(self) -> None:
        self._refusing = False
        self._flowing.set()

    def drop_connections(self) -> None:
        """Reset every connection open now, on both sides; bytes held back by a blackhole are lost."""
        for connection in list(self._connections):
            connection.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        self._flowing.set()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()
            return
        connection = _Connection(client_writer, upstream_writer)
        self._connections.add(connection)
        connection.pumps = [
            asyncio.create_task(self._pump(client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, client_writer)),
        ]
        try:
            await asyncio.wait(connection.pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connection.abort()
            self._connections.discard(connection)

    async def _pump(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await self._flowing.wait()
                data = await source.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()  # read just before a blackhole: held back, not forwarded
                target.write(data)
                await target.drain()


class _Connection:
    """One client connection and its upstream twin."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self._writers = (client, upstream)
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for pump in self.pumps:
            pump.cancel()
        for writer in self._writers:
            writer.transport.abort()
