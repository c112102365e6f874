"""Counting Redis traffic with Redis's own protocol: a TCP proxy in front of Redis, and what Redis says it holds.

`RedisMeter` listens on 127.0.0.1 and forwards every connection to the real Redis, byte for byte, in a thread of
its own (its own event loop, so it serves whatever the caller runs). On the way it counts, per connection:

- **round trips**: a client's request and the server's answer. A new round trip starts when the client sends
  after the server last spoke on that connection (or first); a pipeline or a MULTI/EXEC block sent in one go is
  one round trip, however many commands it holds, which is what a network round trip costs.
- **commands**: every RESP array the client sends (``*<n>`` then n bulk strings), by name (``JSON.SET``, ...),
  parsed from the byte stream, so commands inside pipelines and transactions each count.
- **bytes** in each direction.

Numbers are exact and belong to the clients pointed at the meter only (nothing else using the same Redis shows).
`thread_footprint` reads what Redis holds for one thread: ``MEMORY USAGE`` of every key naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

START_TIMEOUT_S = 10.0
READ_SIZE = 1 << 16


@dataclass(frozen=True)
class Traffic:
    """Redis traffic through the meter: totals since it started, or a difference of two readings."""

    round_trips: int = 0
    commands: int = 0
    bytes_in: int = 0  # client -> Redis
    bytes_out: int = 0  # Redis -> client
    connections: int = 0  # connections opened
    by_command: dict[str, int] = field(default_factory=dict)

    def __sub__(self, other: Traffic) -> Traffic:
        names = set(self.by_command) | set(other.by_command)
        diff = {n: self.by_command.get(n, 0) - other.by_command.get(n, 0) for n in names}
        return Traffic(
            self.round_trips - other.round_trips,
            self.commands - other.commands,
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
            self.connections - other.connections,
            {n: c for n, c in diff.items() if c},
        )

    @property
    def bytes(self) -> int:
        return self.bytes_in + self.bytes_out


class _CommandParser:
    """Incremental RESP request parser: feed client bytes, it counts complete commands by name."""

    def __init__(self, counts: Counter[str]) -> None:
        self._buffer = bytearray()
        self._counts = counts

    def feed(self, data: bytes) -> int:
        """Add bytes; return how many complete commands they finished."""
        self._buffer += data
        done, start = 0, 0
        while start < len(self._buffer):
            parsed = self._one(start)
            if parsed is None:
                break
            name, start = parsed
            self._counts[name] += 1
            done += 1
        del self._buffer[:start]
        return done

    def _one(self, start: int) -> tuple[str, int] | None:
        """(command name, where the next command starts), or None if the command is not complete yet."""
        buf = self._buffer
        end = buf.find(b"\r\n", start)
        if end < 0:
            return None
        if buf[start : start + 1] != b"*":  # an inline command: one line, words separated by spaces
            words = bytes(buf[start:end]).split()
            return (words[0].decode(errors="replace").upper() if words else "(empty)"), end + 2
        count = int(buf[start + 1 : end])
        position, name = end + 2, ""
        for index in range(count):
            line_end = buf.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(buf[position + 1 : line_end])  # "$<size>"
            data_start = line_end + 2
            if len(buf) < data_start + size + 2:
                return None
            if index == 0:
                name = bytes(buf[data_start : data_start + size]).decode(errors="replace").upper()
            position = data_start + size + 2
        return name, position


class RedisMeter:
    """A counting TCP proxy in front of the Redis at `upstream_url`; `url` is what clients use instead."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._path = parts.path
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._round_trips = self._bytes_in = self._bytes_out = self._connections = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._path}"

    def reading(self) -> Traffic:
        with self._lock:
            return Traffic(
                self._round_trips,
                sum(self._counts.values()),
                self._bytes_in,
                self._bytes_out,
                self._connections,
                dict(self._counts),
            )

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RedisMeter:
        self._thread = threading.Thread(target=self._serve, name="redis-meter", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise RuntimeError("the Redis meter did not start") from self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        self._thread = None
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)

    def __enter__(self) -> RedisMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._relay(reader, writer)
            except asyncio.CancelledError:
                pass  # stop() ends every connection; the task ends quietly (asyncio would log a cancelled one)
            finally:
                connections.discard(task)

        try:
            server = await asyncio.start_server(accepted, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - start() raises over whatever stopped start-up
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections += 1
        parser = _CommandParser(self._counts)  # fed under the lock
        turn = ["server"]  # who spoke last on this connection

        async def upstream() -> None:
            while data := await client_reader.read(READ_SIZE):
                with self._lock:
                    if turn[0] != "client":
                        self._round_trips += 1
                    turn[0] = "client"
                    self._bytes_in += len(data)
                    parser.feed(data)
                server_writer.write(data)
                await server_writer.drain()
            with contextlib.suppress(OSError):
                server_writer.write_eof()

        async def downstream() -> None:
            while data := await server_reader.read(READ_SIZE):
                with self._lock:
                    turn[0] = "server"
                    self._bytes_out += len(data)
                client_writer.write(data)
                await client_writer.drain()
            with contextlib.suppress(OSError):
                client_writer.write_eof()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()


# --- what Redis holds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """What Redis holds for one thread: keys naming it and their MEMORY USAGE, and the server's used_memory."""

    keys: int
    key_bytes: int  # sum of MEMORY USAGE <key> SAMPLES 0 over the thread's keys
    used_memory: int  # INFO memory used_memory of the whole server when read
    by_kind: dict[str, int]  # key bytes by the key's first name part (checkpoint, checkpoint_write, ...)


async def thread_footprint(redis_url: str, thread_id: str) -> Footprint:
    """Every key whose name holds `thread_id` as one of its ``:``-separated parts (the saver's
    ``checkpoint:<thread>:…``, ``checkpoint_write:<thread>:…``, ``checkpoint_latest:<thread>:…``,
    ``write_keys_zset:<thread>:…`` and the bot's ``<prefix>run:<thread>``, ``<prefix>slack:run:<thread>``, …)."""
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        keys, total, by_kind = 0, 0, Counter[str]()
        async for key in client.scan_iter(match=f"*{thread_id}*", count=1000):
            if thread_id not in key.split(":"):
                continue
            size = await client.memory_usage(key, samples=0) or 0
            keys += 1
            total += size
            by_kind[_kind(key)] += size
        info: dict[str, Any] = await client.info("memory")
        return Footprint(keys, total, int(info["used_memory"]), dict(by_kind))
    finally:
        await client.aclose()


def _kind(key: str) -> str:
    first = key.split(":", 1)[0]
    return first if first.startswith(("checkpoint", "write_keys")) else "the bot's own keys"


async def server_memory(redis_url: str) -> tuple[int, int]:
    """(used_memory, number of keys) of the whole server."""
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        info: dict[str, Any] = await client.info("memory")
        return int(info["used_memory"]), int(await client.dbsize())
    finally:
        await client.aclose()
