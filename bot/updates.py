"""Delivery of message edits (`chat.update`): coalescing, priorities and the workspace-wide Tier 3 budget.

Every progress message and approval card is rewritten through one `MessageUpdater` per process. Callers
`submit()` the latest state of a message and move on; a single worker task decides what Slack gets and when:

* one pending edit per message (channel + ts): a newer submit replaces undelivered content;
* three classes, each served before the next (`Priority`): card decisions (a card decided, closed or with a
  new approver: what a person just did), then end states and pauses of runs, then progress;
* within a class, round robin between owners (the person a run works for): the owner served least recently
  goes next, and within one owner the message that waited longest. One person's flood of runs shares the
  budget with everyone else instead of queueing them behind it;
* a progress edit waits `settle_s` after its first submit (and `message_interval_s` after the message's last
  edit) for what follows, so a run that ends or pauses within that time costs one edit, not several;
* `chat.update` is ~50/min for the whole workspace, so every replica takes a slot from a sliding window kept
  in Redis (`SharedBudget`) before calling, and a 429 pauses every replica until its Retry-After has passed.
  Part of the window is kept for the higher classes, so no replica's progress or end states can use up the
  slots another replica needs for a decided card.

The client passed in must not carry slack-sdk's `AsyncRateLimitErrorRetryHandler`: it would sleep inside the
call, invisible to the other replicas and outside the budget. The default `AsyncWebClient` has only the
connection-error handler, which is fine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import aiohttp
import redis.asyncio
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from graphs.keys import Keys

from .slack_io import GONE_ERRORS

log = logging.getLogger(__name__)

Key = tuple[str, str]
OnGone = Callable[[], Awaitable[None]]


class Priority(IntEnum):
    """Which edits go first (lower first)."""

    DECISION = 0  # a card decided, closed (cancelled, expired, replaced) or showing a new approver
    END = 1  # a run's end state, or its pause when the thread must say where the card is
    PROGRESS = 2  # everything else: streaming text, steps running


# Slack answers these with HTTP 200 and ok=false, yet they say nothing about the message itself.
_TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
_MAX_BACKOFF_S = 30.0
_REDIS_RETRY_S = 1.0
_WORKER_ERROR_PAUSE_S = 1.0
_CLOSE_WAIT_S = 2.0  # while closing, wait at most this long for a budget slot
_IDLE_POLL_S = 5.0  # the worker re-checks even without a wake-up, so a lost wake-up costs seconds, not forever
_KEEP_IDLE = 10_000  # delivered messages remembered for flush() and edit spacing

# KEYS[1] window zset, KEYS[2] blocked flag; ARGV: window ms, limit, member.
# Returns 0 if the call was admitted, else the milliseconds to wait before asking again.
# Redis' own clock, so replicas with skewed clocks share one window.
_ACQUIRE = """
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return blocked end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

# KEYS[1] blocked flag; ARGV[1] ms. Never shortens a pause another replica already set.
_BLOCK = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


class SharedBudget:
    """A sliding-window budget for one Slack method, shared through Redis by every replica.

    `per_minute` calls are admitted per `window_s` (Slack's window is 60 s; tests shorten it).
    """

    def __init__(self, redis_client: redis.asyncio.Redis, key: str, per_minute: int, window_s: float = 60.0) -> None:
        if per_minute < 1 or window_s <= 0:
            raise ValueError("per_minute must be >= 1 and window_s > 0")
        self.key = key
        self.blocked_key = f"{key}:blocked"
        self._per_minute = per_minute
        # A third of the window is kept for final content (end states, cards, decisions): a burst of streaming
        # progress must never leave a clicked card showing "Approval needed" for the rest of the minute. Of
        # that, a fifteenth of the window (at least one slot) is kept for card decisions alone: a flood of runs
        # ending at once, on any replica, must not hold back a card someone just decided.
        small = per_minute < 3
        self._limits = {
            Priority.DECISION: per_minute,
            Priority.END: per_minute if small else per_minute - max(1, per_minute // 15),
            Priority.PROGRESS: per_minute if small else per_minute - (per_minute + 2) // 3,
        }
        self._window_ms = max(1, round(window_s * 1000))
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._block = redis_client.register_script(_BLOCK)
        self._owner = uuid.uuid4().hex
        self._seq = itertools.count()

    def limit(self, priority: Priority) -> int:
        """How many calls of the window an edit of this class may find taken and still be admitted."""
        return self._limits[priority]

    async def acquire(self, priority: Priority = Priority.DECISION) -> float:
        """Take one call slot: 0.0 if admitted, else the seconds to wait before asking again.
        Progress and end states may only use the part of the window not reserved for the classes above them."""
        member = f"{self._owner}:{next(self._seq)}"
        limit = self._limits[priority]
        wait_ms = await self._acquire(keys=[self.key, self.blocked_key], args=[self._window_ms, limit, member])
        return int(wait_ms) / 1000

    async def block(self, seconds: float) -> None:
        """Pause every replica for `seconds` (Slack's Retry-After)."""
        await self._block(keys=[self.blocked_key], args=[max(1, math.ceil(seconds * 1000))])


@dataclass
class _Content:
    text: str
    blocks: list[dict[str, Any]] | None
    priority: Priority
    version: int
    since: float  # when this message first had undelivered content: the "waited longest" order
    first_version: int = 0  # the oldest submit this content holds (newer ones replaced it, undelivered)

    @property
    def final(self) -> bool:
        return self.priority <= Priority.END


@dataclass
class _Message:
    channel: str
    ts: str
    version: int = 0  # latest submitted
    pending: _Content | None = None
    inflight: _Content | None = None
    last_attempt: float = -math.inf
    retry_at: float = 0.0
    attempts: int = 0  # consecutive transient failures
    resolved_version: int = 0
    resolved_ok: bool = True
    waiters: list[tuple[int, asyncio.Future[bool]]] = field(default_factory=list)
    owner: str = ""  # whose budget share it uses (round robin between owners); "" until a submit names one
    on_gone: OnGone | None = None  # called once if Slack says the message is gone
    sent: int = 0  # edits delivered

    def ready_at(self, interval_s: float, settle_s: float) -> float:
        assert self.pending is not None
        if self.pending.final:
            return self.retry_at
        return max(self.retry_at, self.last_attempt + interval_s, self.pending.since + settle_s)

    def idle(self) -> bool:
        return self.pending is None and self.inflight is None and not self.waiters


class MessageUpdater:
    """Coalesces, prioritises and paces `chat.update` calls; one background worker sends them."""

    def __init__(
        self,
        client: AsyncWebClient,
        redis: redis.asyncio.Redis,
        *,
        per_minute: int = 45,
        message_interval_s: float = 1.0,
        keys: Keys | None = None,
        max_attempts_5xx: int = 5,
        window_s: float = 60.0,
        retry_base_s: float = 1.0,
        settle_s: float | None = None,
    ) -> None:
        """`per_minute` calls per `window_s` for all replicas sharing `keys`' prefix; transient failures are retried
        `max_attempts_5xx` times in all, `retry_base_s` apart at first, doubling. A progress edit waits `settle_s`
        (default: `message_interval_s`) after it was first submitted, for what follows it."""
        handlers = getattr(client, "retry_handlers", None) or []
        if any(isinstance(h, (AsyncRateLimitErrorRetryHandler, RateLimitErrorRetryHandler)) for h in handlers):
            raise ValueError("the client must not have a RateLimitErrorRetryHandler: MessageUpdater handles 429s")
        self._client = client
        self._budget = SharedBudget(redis, (keys or Keys()).budget("chat.update"), per_minute, window_s)
        self._interval_s = message_interval_s
        self._settle_s = message_interval_s if settle_s is None else settle_s
        self._max_attempts = max(1, max_attempts_5xx)
        self._retry_base_s = retry_base_s
        self._messages: OrderedDict[Key, _Message] = OrderedDict()
        self._queued: dict[Key, _Message] = {}  # messages with pending content
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._counts = {"sent": 0, "coalesced": 0, "rate_limited": 0, "errors": 0, "dropped": 0, "withdrawn": 0}
        # Round robin: when each owner was last served (a running count; never served: 0, so first).
        self._served: dict[str, int] = {}
        self._serving = itertools.count(1)
        self._callbacks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="message-updater")

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Deliver what is pending for up to `drain_timeout_s`, then stop; what is left is dropped and logged."""
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
            except TimeoutError:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            except asyncio.CancelledError:  # our caller gave up: the shielded worker must not outlive it
                task.cancel()
                raise
            except Exception:
                log.exception("message updater worker failed")
        left = [m for m in self._messages.values() if m.pending is not None or m.inflight is not None]
        if left:
            log.warning(
                "message updater closed with %d undelivered message(s): %s",
                len(left),
                ", ".join(f"{m.channel}/{m.ts}" for m in left[:10]),
            )
        for msg in left:
            msg.pending = msg.inflight = None
            self._resolve(msg, msg.version, ok=False)
        self._queued.clear()
        if self._callbacks:
            await asyncio.wait(set(self._callbacks), timeout=1.0)

    def submit(
        self,
        channel: str,
        ts: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        final: bool = False,
        decision: bool = False,
        owner: str | None = None,
        on_gone: OnGone | None = None,
    ) -> None:
        """Make this the content of message (channel, ts); returns at once and never raises.

        ``decision``: a card's decision (served first); ``final``: an end state or pause (served next); else
        progress. ``owner`` (e.g. the person the run works for) shares the budget fairly with other owners;
        ``on_gone`` is awaited once if Slack answers that the message is gone (deleted, or its channel)."""
        try:
            if self._closing:
                log.warning("chat.update for %s/%s submitted after close: not delivered", channel, ts)
                return
            key = (channel, ts)
            msg = self._messages.get(key)
            if msg is None:
                msg = self._messages[key] = _Message(channel, ts)
            self._messages.move_to_end(key)
            if owner:
                msg.owner = owner
            if on_gone is not None:
                msg.on_gone = on_gone
            msg.version += 1
            old = msg.pending
            if old is not None:
                self._counts["coalesced"] += 1
            priority = Priority.DECISION if decision else Priority.END if final else Priority.PROGRESS
            msg.pending = _Content(
                text=text,
                blocks=blocks,
                priority=min(priority, old.priority) if old is not None else priority,  # sticky until delivered
                version=msg.version,
                since=old.since if old is not None else time.monotonic(),
                first_version=old.first_version if old is not None else msg.version,
            )
            self._queued[key] = msg
            self._wakeup.set()
        except Exception:  # a progress edit must never break the run that reports it
            log.exception("submit failed for %s/%s", channel, ts)

    def version(self, channel: str, ts: str) -> int:
        """How many edits of the message were submitted to this updater so far (a mark for ``withdraw``)."""
        msg = self._messages.get((channel, ts))
        return msg.version if msg is not None else 0

    def edited(self, channel: str, ts: str) -> bool:
        """Whether this updater changed the message on Slack since it was posted (or is changing it now)."""
        msg = self._messages.get((channel, ts))
        return msg is not None and (msg.sent > 0 or msg.inflight is not None)

    def withdraw(self, channel: str, ts: str, *, after: int = 0) -> bool:
        """Drop the message's undelivered edit if everything it holds was submitted after mark ``after`` (see
        ``version``): True if nothing submitted since that mark is left to deliver, False if that is not so
        (an edit is in flight, or older content waits in the same edit) and the edit stays."""
        msg = self._messages.get((channel, ts))
        if msg is None:
            return True
        if msg.inflight is not None:
            return False
        if msg.pending is None:
            return True
        if msg.pending.first_version <= after:
            return False
        msg.pending = None
        self._queued.pop((channel, ts), None)
        self._counts["withdrawn"] += 1
        self._resolve(msg, msg.version, ok=True)  # nothing is owed: flush() does not wait for it
        return True

    async def flush(self, channel: str, ts: str, timeout_s: float = 30.0) -> bool:
        """Wait until the latest content submitted for the message is delivered (True) or dropped (False)."""
        msg = self._messages.get((channel, ts))
        if msg is None:
            return True
        target = msg.version
        if msg.resolved_version >= target:
            return msg.resolved_ok
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (target, waiter)
        msg.waiters.append(entry)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return False
        finally:
            if entry in msg.waiters:
                msg.waiters.remove(entry)

    @property
    def stats(self) -> dict[str, int]:
        pending = sum(1 for m in self._messages.values() if m.pending is not None or m.inflight is not None)
        return {**self._counts, "pending": pending}

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        while True:
            try:
                if not await self._step():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker is the only sender: it must outlive any bug in one delivery
                log.exception("message updater worker error")
                await asyncio.sleep(_WORKER_ERROR_PAUSE_S)

    async def _step(self) -> bool:
        """One scheduling round; False when closing and nothing is left."""
        self._wakeup.clear()
        msg, wait = self._next(time.monotonic())
        if msg is None:
            if self._closing and not self._queued:
                return False
            await self._idle(wait)
            return True
        assert msg.pending is not None
        admitted = msg.pending.priority
        try:
            delay = await self._budget.acquire(admitted)
        except RedisError as e:
            log.warning("chat.update budget unavailable (%s): retrying in %.0fs", type(e).__name__, _REDIS_RETRY_S)
            await asyncio.sleep(_REDIS_RETRY_S)
            return True
        if delay > 0:
            if self._closing and delay > _CLOSE_WAIT_S:
                return False  # the budget will not free up before shutdown; close() logs what is left
            await self._idle(delay)  # a new submit (perhaps final) or close() wakes us early
            return True
        # Priorities may have changed while Redis answered: send what is most urgent now, as long as the slot
        # taken allows it (a slot taken for a decision must not let progress past its share of the window).
        best, _ = self._next(time.monotonic())
        if best is not None and best.pending is not None and best.pending.priority > admitted:
            best = msg if msg.pending is not None and (msg.channel, msg.ts) in self._queued else None
        if best is not None:
            await self._deliver(best)
        return True

    def _next(self, now: float) -> tuple[_Message | None, float | None]:
        """The most urgent message ready now, else None and the seconds until one is ready (None: none queued).
        Most urgent: the highest class; then the owner served least recently; then the longest wait."""
        best: _Message | None = None
        best_rank: tuple[int, int, float] | None = None
        soonest: float | None = None
        settle_s = 0.0 if self._closing else self._settle_s
        for msg in self._queued.values():
            ready = msg.ready_at(self._interval_s, settle_s)
            if ready > now:
                soonest = ready if soonest is None else min(soonest, ready)
                continue
            assert msg.pending is not None
            rank = (int(msg.pending.priority), self._served.get(self._owner_of(msg), 0), msg.pending.since)
            if best_rank is None or rank < best_rank:
                best, best_rank = msg, rank
        if best is not None:
            return best, 0.0
        return None, (None if soonest is None else soonest - now)

    @staticmethod
    def _owner_of(msg: _Message) -> str:
        return msg.owner or f"{msg.channel}/{msg.ts}"

    async def _idle(self, wait: float | None) -> None:
        timeout = _IDLE_POLL_S if wait is None else min(max(wait, 0.001), _IDLE_POLL_S)
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    async def _deliver(self, msg: _Message) -> None:
        content = msg.pending
        assert content is not None
        msg.pending, msg.inflight = None, content
        self._queued.pop((msg.channel, msg.ts), None)
        msg.last_attempt = time.monotonic()
        self._served[self._owner_of(msg)] = next(self._serving)
        try:
            await self._client.chat_update(channel=msg.channel, ts=msg.ts, text=content.text, blocks=content.blocks)
        except SlackApiError as e:
            await self._failed(msg, content, e)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self._counts["errors"] += 1
            self._retry_later(msg, content, f"{type(e).__name__}")
        except Exception:  # e.g. content slack-sdk cannot serialise: retrying would fail the same way
            self._counts["errors"] += 1
            self._counts["dropped"] += 1
            log.exception("chat.update %s/%s failed unexpectedly, edit dropped", msg.channel, msg.ts)
            self._resolve(msg, content.version, ok=False)
        else:
            self._counts["sent"] += 1
            msg.sent += 1
            msg.attempts = 0
            self._resolve(msg, content.version, ok=True)
        finally:
            msg.inflight = None
            self._forget_idle()

    async def _failed(self, msg: _Message, content: _Content, e: SlackApiError) -> None:
        status = getattr(e.response, "status_code", 0)
        data = e.response.data if isinstance(getattr(e.response, "data", None), dict) else {}
        error = str(data.get("error") or f"http_{status}")
        if status == 429 or error == "ratelimited":
            self._counts["rate_limited"] += 1
            retry_after = _retry_after(e.response)
            log.warning("chat.update rate limited: pausing all edits for %.1fs (Retry-After)", retry_after)
            self._requeue(msg, content)
            try:
                await self._budget.block(retry_after)
            except RedisError as re:
                log.warning("could not share the chat.update pause through Redis (%s)", type(re).__name__)
            await asyncio.sleep(retry_after)
            return
        self._counts["errors"] += 1
        if status >= 500 or error in _TRANSIENT_ERRORS:
            self._retry_later(msg, content, f"{error} (HTTP {status})")
            return
        self._counts["dropped"] += 1
        details = ""
        if error == "invalid_blocks":
            details = f": {(data.get('response_metadata') or {}).get('messages')}"
        log.error(
            "chat.update %s/%s failed permanently with %s (HTTP %s), edit dropped%s",
            msg.channel,
            msg.ts,
            error,
            status,
            details,
        )
        self._resolve(msg, content.version, ok=False)
        if error in GONE_ERRORS and msg.on_gone is not None:
            self._call_back(msg.on_gone, msg)
            msg.on_gone = None

    def _call_back(self, on_gone: OnGone, msg: _Message) -> None:
        """Run a message's gone hook in its own task: the worker never waits on it."""

        async def run() -> None:
            try:
                await on_gone()
            except Exception:  # e.g. Redis down: the hook is a courtesy, the edit is dropped either way
                log.exception("noting that %s/%s is gone failed", msg.channel, msg.ts)

        task = asyncio.get_running_loop().create_task(run(), name=f"gone {msg.channel}/{msg.ts}")
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    def _retry_later(self, msg: _Message, content: _Content, reason: str) -> None:
        msg.attempts += 1
        if msg.attempts >= self._max_attempts:
            self._counts["dropped"] += 1
            log.error(
                "chat.update %s/%s failed %d times (last: %s), edit dropped", msg.channel, msg.ts, msg.attempts, reason
            )
            msg.attempts = 0
            self._resolve(msg, content.version, ok=False)
            return
        backoff = min(_MAX_BACKOFF_S, self._retry_base_s * 2 ** (msg.attempts - 1))
        log.warning(
            "chat.update %s/%s failed (%s), attempt %d/%d, retrying in %.1fs",
            msg.channel,
            msg.ts,
            reason,
            msg.attempts,
            self._max_attempts,
            backoff,
        )
        msg.retry_at = time.monotonic() + backoff
        self._requeue(msg, content)

    def _requeue(self, msg: _Message, content: _Content) -> None:
        """Put undelivered content back, unless something newer was submitted meanwhile (then merge into it)."""
        if msg.pending is None:
            msg.pending = content
        else:
            self._counts["coalesced"] += 1
            msg.pending.priority = min(msg.pending.priority, content.priority)
            msg.pending.since = min(msg.pending.since, content.since)
            msg.pending.first_version = min(msg.pending.first_version, content.first_version)
        self._queued[(msg.channel, msg.ts)] = msg

    def _resolve(self, msg: _Message, version: int, *, ok: bool) -> None:
        msg.resolved_version, msg.resolved_ok = max(msg.resolved_version, version), ok
        still: list[tuple[int, asyncio.Future[bool]]] = []
        for target, waiter in msg.waiters:
            if target <= version:
                if not waiter.done():
                    waiter.set_result(ok)
            else:
                still.append((target, waiter))
        msg.waiters = still

    def _forget_idle(self) -> None:
        if len(self._served) > _KEEP_IDLE:
            waiting = {self._owner_of(m) for m in self._queued.values()}
            self._served = {owner: n for owner, n in self._served.items() if owner in waiting}
        if len(self._messages) <= _KEEP_IDLE:
            return
        for key in [
            k for k, m in itertools.islice(self._messages.items(), len(self._messages) - _KEEP_IDLE) if m.idle()
        ]:
            del self._messages[key]


def _retry_after(response: Any) -> float:
    headers = getattr(response, "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", 1)))
    except (TypeError, ValueError):
        return 1.0
