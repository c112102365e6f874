"""`LocalSlack`: the facade tests and tools use — a local slack.com (Web API + signed delivery) in its own thread.

The aiohttp server runs on a private event loop in a background thread, so it serves whatever loop (or none) the
caller runs, and bot subprocesses reach it over 127.0.0.1. Deliveries (`post_user_message`, `click_button`, ...)
are coroutines that run on the caller's loop; state inspection is synchronous and returns copies.

With an `app_token` it speaks Socket Mode too (socket_mode.py): while a client is connected (or always, with
`socket_mode=True`), the same delivery methods send envelopes over the WebSocket instead of signed POSTs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .calllog import CallLog, Entry
from .delivery import Deliverer
from .limits import Fault, Limiter
from .socket_mode import SocketModeHub
from .transport import Delivery
from .web_api import ApiContext, build_routes
from .workspace import JSON, Workspace

START_TIMEOUT_S = 10.0


class LocalSlack:
    """A stand-in for slack.com on 127.0.0.1. Use as a context manager or call start() / stop()."""

    def __init__(
        self,
        signing_secret: str,
        bot_url: str | None = None,
        bot_token: str = "xoxb-test",
        *,
        rate_limits: Mapping[str, int | None] | None = None,
        port: int = 0,
        delivery_timeout: float = 3.0,
        verification_token: str = "local-verification-token",
        workspace: Workspace | None = None,
        extra_routes: Callable[[LocalSlack], Iterable[web.AbstractRouteDef]] | None = None,
        app_token: str | None = None,
        socket_mode: bool = False,
        api_latency_ms: float = 0.0,
    ) -> None:
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.bot_url: str | None = bot_url  # settable any time: the bot may start after the local Slack
        self.workspace = workspace or Workspace()
        self.limiter = Limiter(rate_limits)
        self.log = CallLog()
        self._port = port
        # More routes on the same app and loop, e.g. the sandbox's web UI (sandbox/web), which reads this object.
        self._extra_routes = extra_routes
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.app_token = app_token
        # Socket Mode: links are handed out to the app token only; `socket_mode=True` delivers over them even before
        # the bot connects (each delivery waits up to `delivery_timeout` for a link).
        self._socket = SocketModeHub(
            self.workspace, self.log, lambda: self.url, timeout=delivery_timeout, always=socket_mode
        )
        self._api = ApiContext(
            self.workspace,
            self.limiter,
            self.log,
            bot_token,
            lambda: self.url,
            app_token=app_token,
            socket_url=self._socket.issue_url,
        )
        self.api_latency_ms = api_latency_ms
        self._deliverer = Deliverer(
            self.workspace,
            self.log,
            signing_secret,
            lambda: self.bot_url,
            lambda: self.url,
            verification_token,
            delivery_timeout,
        )
        self._deliverer.socket = self._socket

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalSlack:
        if self._thread is not None:
            raise RuntimeError("LocalSlack already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._serve, name="local-slack", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("local Slack did not start in time")
        if self._start_error is not None:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError("local Slack failed to start") from self._start_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread (bounded by `timeout`)."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"local Slack thread did not stop within {timeout}s")

    def __enter__(self) -> LocalSlack:
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
        self._stop_event = asyncio.Event()
        self._socket.bind(asyncio.get_running_loop())
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.add_routes(build_routes(self._api))
        app.add_routes(self._socket.routes())
        if self._extra_routes is not None:
            app.add_routes(list(self._extra_routes(self)))
        # A short shutdown grace: the bot's keep-alive sessions must not hold stop() for a minute.
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self._port)
            await site.start()
            self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as e:  # noqa: BLE001 - start() raises over whatever stopped start-up
            self._start_error = e
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._socket.close_all()  # Socket Mode links first: the server's shutdown would wait on them
            await runner.cleanup()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        """What the bot passes as `AsyncWebClient(base_url=...)` / SLACK_API_URL."""
        return f"{self.url}api/"

    # ------------------------------------------------------------------ Socket Mode

    @property
    def socket_mode(self) -> bool:
        """Deliver over Socket Mode even while no client is connected (settable any time)."""
        return self._socket.always

    @socket_mode.setter
    def socket_mode(self, value: bool) -> None:
        self._socket.always = value

    @property
    def socket_connections(self) -> int:
        """Socket Mode links open now: deliveries use one of them while there is any."""
        return self._socket.connection_count

    async def send_socket_disconnect(self, reason: str = "refresh_requested") -> int:
        """Send `{"type": "disconnect"}` on every link, as Slack does before recycling one; returns how many."""
        return await self._socket.send_disconnect(reason)

    # ------------------------------------------------------------------ seeding

    def add_user(self, user_id: str, name: str, is_admin: bool = False, real_name: str | None = None) -> JSON:
        return self.workspace.add_user(user_id, name, is_admin=is_admin, real_name=real_name)

    def add_channel(self, name: str, is_private: bool = False) -> str:
        return self.workspace.add_channel(name, is_private=is_private)

    def add_usergroup(self, group_id: str, handle: str, members: list[str]) -> None:
        self.workspace.add_usergroup(group_id, handle, members)

    def dm_channel(self, user: str) -> str:
        return self.workspace.dm_channel(user)

    def channel_id(self, name: str) -> str:
        return self.workspace.resolve_channel(name)

    def reset(self) -> None:
        """Seed state again and forget calls, faults and rate windows (limits configured at init are kept)."""
        self.workspace.reset()
        self.log.clear()
        self.limiter.reset()

    # ------------------------------------------------------------------ faults and rate limits

    @property
    def api_latency_ms(self) -> float:
        """Milliseconds added to every Web API call (and response_url post) before it is handled, like the round
        trip to slack.com; 0 (the default) answers at once. Settable any time; the call log's `latency_ms`
        includes it."""
        return self._api.latency_ms

    @api_latency_ms.setter
    def api_latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"api_latency_ms must be >= 0, got {value}")
        self._api.latency_ms = float(value)

    def inject_fault(
        self,
        method: str,
        status: int = 429,
        retry_after: int = 1,
        times: int = 1,
        error: str | None = None,
        when: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        """Make the next `times` calls of `method` ("*" = any) fail with HTTP `status` (429 carries Retry-After);
        `when` picks which calls count, by their parameters."""
        self.limiter.inject(Fault(method, status, retry_after, times, error, when))

    def clear_faults(self) -> None:
        self.limiter.clear_faults()

    def set_rate_limit(self, method: str, per_minute: int | None) -> None:
        self.limiter.set_limit(method, per_minute)

    def rate(self, method: str) -> int:
        """Calls to `method` in the last 60 s (including rejected ones)."""
        return self.limiter.rate(method)

    def peak_rate(self, method: str) -> int:
        """The most calls to `method` seen in any 60 s window: assert it stays under the budget."""
        return self.limiter.peak_rate(method)

    # ------------------------------------------------------------------ inspection

    def messages(self, channel: str, thread_ts: str | None = None) -> list[JSON]:
        return self.workspace.messages(channel, thread_ts)

    def message(self, channel: str, ts: str) -> JSON | None:
        return self.workspace.message(channel, ts)

    def edit_history(self, channel: str, ts: str) -> list[JSON]:
        return self.workspace.edit_history(channel, ts)

    def ephemerals(self, user: str | None = None) -> list[JSON]:
        return self.workspace.ephemerals(user)

    def views(self, user: str | None = None, open_only: bool = False) -> list[JSON]:
        """View records: {"view": <Slack view>, "user", "is_open", "errors"}."""
        return self.workspace.views(user, open_only)

    def view(self, view_id: str) -> JSON:
        return self.workspace.view(view_id)

    def calls(self, method: str | None = None, since: int = 0) -> list[Entry]:
        """Web API calls (kind "api"), oldest first: method, params (token redacted), response, status, latency."""
        return self.log.entries(kind="api", method=method, since=since)

    def deliveries(self, kind: str | None = None) -> list[Entry]:
        return self.log.entries(kind="delivery", method=kind)

    @property
    def unknown_calls(self) -> list[Entry]:
        """Calls to methods the local Slack does not implement: a bot test should assert this stays empty."""
        return [c for c in self.calls() if c.get("unknown")]

    def new_trigger(self, user: str) -> str:
        """A fresh trigger_id for `user`, as an interaction would carry (valid 3 s)."""
        return self.workspace.new_trigger(user)

    def age_trigger(self, trigger_id: str, seconds: float) -> None:
        self.workspace.age_trigger(trigger_id, seconds)

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 10.0,
        interval: float = 0.05,
        description: str | None = None,
    ) -> Any:
        """Poll `predicate` (sync or async) until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(interval)
        what = description or getattr(predicate, "__name__", repr(predicate))
        recent = [
            f"{c['kind']}:{c.get('method')}->{c.get('status')} {c.get('response', {}).get('error', '')}".strip()
            for c in self.log.entries()[-8:]
        ]
        raise TimeoutError(f"waited {timeout}s for {what}; last value {last!r}; recent traffic: {recent}")

    # ------------------------------------------------------------------ delivery (async, caller's loop)

    async def post_user_message(
        self, user: str, channel: str, text: str, thread_ts: str | None = None
    ) -> list[Delivery]:
        return await self._deliverer.post_user_message(user, channel, text, thread_ts)

    def event_envelope(self, event: JSON) -> JSON:
        return self._deliverer.envelope(event)

    async def deliver_event(
        self, envelope: JSON, retry_num: int | None = None, retry_reason: str | None = None
    ) -> Delivery:
        return await self._deliverer.deliver_event(envelope, retry_num, retry_reason)

    async def click_button(
        self, user: str, channel: str, message_ts: str, action_id: str, block_id: str | None = None
    ) -> Delivery:
        return await self._deliverer.click_button(user, channel, message_ts, action_id, block_id)

    async def toggle_checkbox(
        self, user: str, channel: str, message_ts: str, block_id: str, action_id: str, value: str, checked: bool
    ) -> Delivery:
        return await self._deliverer.toggle_checkbox(user, channel, message_ts, block_id, action_id, value, checked)

    async def slash_command(self, user: str, channel: str, command: str, text: str = "") -> Delivery:
        return await self._deliverer.slash_command(user, channel, command, text)

    async def submit_view(self, user: str, view_id: str, values: dict[str, dict[str, Any]] | None = None) -> Delivery:
        return await self._deliverer.submit_view(user, view_id, values)

    async def close_view(self, user: str, view_id: str) -> Delivery | None:
        return await self._deliverer.close_view(user, view_id)

    async def deliver_raw(
        self,
        body: bytes | str,
        headers: dict[str, str] | None = None,
        sign: bool = True,
        timestamp: int | str | None = None,
    ) -> Delivery:
        return await self._deliverer.deliver_raw(body, headers, sign, timestamp)
