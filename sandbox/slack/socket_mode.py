"""Socket Mode of the local Slack: the WebSocket links `apps.connections.open` hands out, and envelope delivery.

What slack.com does, as slack_sdk's Socket Mode client (the one Bolt's `AsyncSocketModeHandler` uses) expects it:

* `apps.connections.open` (app-level token) answers `{"ok": true, "url": "ws://…/link/?ticket=…&app_id=…"}`; a
  ticket opens one connection and expires after `TICKET_TTL_S`.
* On connect the server sends `{"type": "hello", "num_connections": n, "connection_info": {"app_id": …}, …}`.
* Each delivery is an envelope `{"envelope_id", "type": "events_api" | "interactive" | "slash_commands",
  "payload", "accepts_response_payload"}` (events also carry `retry_attempt` and `retry_reason`); the client acks
  with `{"envelope_id", "payload"?}` within 3 s. The ack's payload plays the part of the HTTP response body.
* `{"type": "disconnect", "reason": …}` asks the client to open a new connection (it calls
  `apps.connections.open` again); WebSocket ping frames are answered with pongs carrying the same data.

Connections live on the local Slack's server loop. `deliver` may be awaited from any loop: it runs on the server
loop and hands the result back, every wait bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web

from .calllog import CallLog
from .transport import Delivery
from .workspace import JSON, Workspace

LINK_PATH = "/link/"
TICKET_TTL_S = 30.0
MAX_TICKETS = 50  # unused tickets kept at most; older ones are forgotten
MAX_CONNECTIONS = 10  # Slack's limit per app
CLOSE_TIMEOUT_S = 1.0  # how long closing a link waits for the client's close frame
ENVELOPE_TYPES = ("events_api", "interactive", "slash_commands")

T = TypeVar("T")


@dataclass
class _Connection:
    id: str
    ws: web.WebSocketResponse
    opened: float = field(default_factory=time.time)
    pending: set[str] = field(default_factory=set)  # envelope ids sent on this link and not acked yet
    retiring: bool = False  # sent a `disconnect`: the client is replacing it


class SocketModeHub:
    """Tickets, open links and in-flight envelopes. `always`: deliver over Socket Mode even before a client
    connects (the delivery then waits, bounded, for one); otherwise only while a client is connected."""

    def __init__(
        self,
        workspace: Workspace,
        log: CallLog,
        base_url: Callable[[], str],
        *,
        timeout: float = 3.0,
        always: bool = False,
    ) -> None:
        self.ws = workspace
        self.log = log
        self.timeout = timeout
        self.always = always
        self._base_url = base_url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tickets: dict[str, float] = {}
        self._connections: list[_Connection] = []
        self._pending: dict[str, asyncio.Future[JSON]] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._connected: asyncio.Event | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle (server loop)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server loop (called from it when the local Slack starts)."""
        self._loop = loop
        self._tickets.clear()
        self._connections.clear()
        self._pending.clear()
        self._in_flight.clear()
        self._connected = asyncio.Event()
        self._closing = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get(LINK_PATH, self._link)]

    async def close_all(self) -> None:
        """Close every link (the client sees a close frame) and finish the deliveries waiting on them."""
        self._closing = True
        if self._connected is not None:
            self._connected.set()  # wake deliveries waiting for a client; they see `_closing`
        for conn in list(self._connections):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"local Slack stopping")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError("local Slack stopped"))
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=CLOSE_TIMEOUT_S)

    # ------------------------------------------------------------------ state (any thread)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def wanted(self) -> bool:
        """Whether deliveries go over Socket Mode right now."""
        return self.always or bool(self._connections)

    # ------------------------------------------------------------------ apps.connections.open (server loop)

    def issue_url(self) -> str:
        """A fresh single-use link URL, as `apps.connections.open` returns it."""
        now = time.monotonic()
        for ticket, issued in list(self._tickets.items()):
            if now - issued > TICKET_TTL_S:
                del self._tickets[ticket]
        while len(self._tickets) >= MAX_TICKETS:
            del self._tickets[next(iter(self._tickets))]
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = now
        base = self._base_url().rstrip("/")
        ws_base = "ws" + base[len("http") :] if base.startswith("http") else base
        return f"{ws_base}{LINK_PATH}?ticket={ticket}&app_id={self.ws.app_id}"

    # ------------------------------------------------------------------ the link (server loop)

    async def _link(self, request: web.Request) -> web.StreamResponse:
        issued = self._tickets.pop(request.query.get("ticket", ""), None)
        if issued is None or time.monotonic() - issued > TICKET_TTL_S:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        if self._closing:
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        if len(self._connections) >= MAX_CONNECTIONS:
            return web.json_response({"ok": False, "error": "too_many_websockets"}, status=429)
        ws = web.WebSocketResponse(autoping=True, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        conn = _Connection("sm-" + secrets.token_hex(4), ws)
        self._connections.append(conn)
        assert self._connected is not None
        self._connected.set()
        self.log.add(
            "socket",
            method="connection.open",
            status=200,
            request={"connection": conn.id},
            response={"connections": len(self._connections)},
            latency_ms=0.0,
            transport="socket",
        )
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": len(self._connections),
                        "debug_info": {"host": "local-slack", "build_number": 1, "approximate_connection_time": 3600},
                        "connection_info": {"app_id": self.ws.app_id},
                    }
                )
            )
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_text(conn, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._connections.remove(conn)
            if not self._connections and not self._closing:
                self._connected.clear()
            for envelope_id in conn.pending:
                future = self._pending.get(envelope_id)
                if future is not None and not future.done():
                    future.set_exception(ConnectionResetError("the link closed before the ack"))
            self.log.add(
                "socket",
                method="connection.closed",
                status=200,
                request={"connection": conn.id},
                response={"close_code": ws.close_code, "connections": len(self._connections)},
                latency_ms=round((time.time() - conn.opened) * 1000, 2),
                transport="socket",
            )
        return ws

    def _on_text(self, conn: _Connection, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        future = self._pending.get(envelope_id) if isinstance(envelope_id, str) else None
        if future is not None and not future.done():
            conn.pending.discard(envelope_id)  # type: ignore[arg-type]
            future.set_result(message)  # type: ignore[arg-type]
            return
        # Not an ack we wait for: a late or repeated ack, or something Slack would ignore. Keep it visible.
        what = "ack.unexpected" if envelope_id else "message.unexpected"
        self.log.add(
            "socket",
            method=what,
            status=200,
            request={"connection": conn.id, "message": data[:2000]},
            response={},
            latency_ms=0.0,
            transport="socket",
        )

    # ------------------------------------------------------------------ delivery

    async def deliver(
        self,
        kind: str,
        envelope_type: str,
        payload: JSON,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Delivery:
        """Send one envelope over a link and wait (bounded) for its ack; awaitable from any event loop."""
        if envelope_type not in ENVELOPE_TYPES:
            raise ValueError(f"unknown envelope type {envelope_type!r}")
        envelope: JSON = {
            "envelope_id": str(uuid.uuid4()),
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        return await self._on_server_loop(self._deliver(kind, envelope))

    async def send_disconnect(self, reason: str = "refresh_requested") -> int:
        """Ask every connected client to reconnect, as Slack does before it recycles a link. Returns how many."""

        async def send() -> int:
            message = json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": "local-slack"}})
            sent = 0
            for conn in list(self._connections):
                if not conn.ws.closed:
                    conn.retiring = True
                    await conn.ws.send_str(message)
                    sent += 1
            return sent

        return await self._on_server_loop(send())

    async def _on_server_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise RuntimeError("the local Slack is not running")
        if asyncio.get_running_loop() is loop:
            return await coro
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    async def _deliver(self, kind: str, envelope: JSON) -> Delivery:
        task = asyncio.current_task()
        assert task is not None and self._connected is not None
        self._in_flight.add(task)
        envelope_id: str = envelope["envelope_id"]
        started = time.perf_counter()
        ack: JSON | None = None
        error: str | None = None
        conn: _Connection | None = None
        try:
            if not self._connections and not self._closing:
                try:
                    await asyncio.wait_for(self._connected.wait(), self.timeout)
                except TimeoutError:
                    pass
            if self._closing or not self._connections:
                error = "no_socket_connection"
            else:
                conn = self._pick()
                future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
                self._pending[envelope_id] = future
                conn.pending.add(envelope_id)
                started = time.perf_counter()  # latency is the round trip, not the wait for a client
                try:
                    await conn.ws.send_str(json.dumps(envelope))
                    ack = await asyncio.wait_for(future, self.timeout)
                except TimeoutError:
                    error = "ack_timeout"  # Slack would retry the envelope, as for an HTTP timeout
                except (ConnectionError, RuntimeError) as e:
                    error = f"connection_failed: {e}"
                finally:
                    self._pending.pop(envelope_id, None)
                    conn.pending.discard(envelope_id)
        finally:
            self._in_flight.discard(task)
        return self._record(kind, envelope, conn, ack, error, round((time.perf_counter() - started) * 1000, 2))

    def _pick(self) -> _Connection:
        """The newest link not being replaced (an older one may be on its way out), else the newest."""
        fresh = [c for c in self._connections if not c.retiring and not c.ws.closed]
        return fresh[-1] if fresh else self._connections[-1]

    def _record(
        self,
        kind: str,
        envelope: JSON,
        conn: _Connection | None,
        ack: JSON | None,
        error: str | None,
        latency_ms: float,
    ) -> Delivery:
        """The ack as a `Delivery`: status 200 and the ack's payload as the body, or status 0 and an error."""
        answer = ack.get("payload") if ack is not None else None
        body = "" if answer is None else json.dumps(answer)
        delivery = Delivery(
            kind,
            200 if ack is not None else 0,
            {},
            body,
            latency_ms,
            request=envelope["payload"],
            error=error,
            transport="socket",
        )
        if answer is not None and not envelope["accepts_response_payload"]:
            delivery.notes.append("ack payload ignored: this envelope does not accept one")
        meta = {k: v for k, v in envelope.items() if k != "payload"}
        self.log.add(
            "delivery",
            method=kind,
            transport="socket",
            request={
                "headers": {},
                "body": envelope["payload"],
                "envelope": meta,
                "connection": conn.id if conn else None,
            },
            status=delivery.status,
            response={"headers": {}, "body": body, "ack": ack},
            latency_ms=latency_ms,
            error=error,
        )
        return delivery
