"""A per-thread lock in Redis, so exactly one process moves a given thread at a time.

Taking it: ``SET key token NX PX ttl``. Keeping it: while the block runs, a keeper task extends the lock
every ``ttl/3`` (compare-and-pexpire), each attempt bounded to ``ttl/10`` and retried every ``ttl/50``
when it fails or hangs. Letting go: compare-and-delete on every way out of the block; if that fails too,
the lock expires on its own after at most ``ttl``.

The guarantee: **a holder that cannot keep its lock stops before the lock can pass to anyone else.**
The keeper cancels the task that entered ``hold()`` as soon as an extension answers that the lock is no
longer ours (it expired, or another token owns it), or when no extension has succeeded by
``last success + ttl - margin`` (Redis is unreachable or hangs, so the lock may be about to expire).
"Last success" is when that call was *sent*, so the keeper never believes the lock lives longer than
Redis does. ``hold()`` turns that cancellation, and only that one, into ``LockLost``; a cancellation from
anywhere else still propagates as ``CancelledError``.

What it cannot promise:
- Work is stopped at its next ``await``. Code that blocks the event loop (or runs in a thread) is not
  interrupted; the margin (``ttl/5`` by default) is the time the holder has to reach an ``await`` and
  clean up before another process may take the thread.
- A write sent to Redis just before the stop can still land after it if the network delivers it late:
  there are no fencing tokens.
- This process and Redis are assumed to measure time at the same rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .errors import LockLost, RunBusy
from .keys import Keys

log = logging.getLogger(__name__)

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_ACQUIRE_POLL_S = 0.05


@dataclass
class _Hold:
    """One ``hold()`` block, shared between the task inside it and its keeper."""

    thread_id: str
    key: str
    token: str
    holder: asyncio.Task[Any]  # the task that entered the block: the one to stop if the lock goes
    extended_at: float  # loop time at which the last successful SET or extension was sent
    lost: str | None = None  # why the keeper stopped the holder; None while the lock is ours
    closing: bool = False  # the block is ending: from now on the keeper must not stop the holder
    cancelled_elsewhere: bool = False  # the holder also has a cancellation that is not ours


class ThreadLocks:
    """The locks of one deployment: one key per thread under ``prefix`` (its ``Keys.lock_prefix``)."""

    def __init__(
        self, redis: Redis, *, prefix: str = Keys().lock_prefix, ttl_ms: int = 15_000, margin_ms: int | None = None
    ) -> None:
        margin_ms = ttl_ms // 5 if margin_ms is None else margin_ms
        if not 0 < margin_ms <= ttl_ms // 2:
            raise ValueError(f"the lock's safety margin must be between 0 and half its ttl, got {margin_ms} ms")
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._ttl_s = ttl_ms / 1000
        self._margin_s = margin_ms / 1000
        self._extend_every_s = self._ttl_s / 3
        self._attempt_s = self._ttl_s / 10
        self._retry_s = self._ttl_s / 50
        self._stopping: dict[asyncio.Task[Any], str] = {}

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, *, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the thread's lock for the block; raise RunBusy if another holder keeps it past ``wait_s``.

        Raises LockLost (and stops the block at its current ``await``) if the lock cannot be kept.
        """
        holder = asyncio.current_task()
        if holder is None:
            raise RuntimeError("ThreadLocks.hold() must be used inside an asyncio task")
        key = self._prefix + thread_id
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            sent = loop.time()
            if await self._redis.set(key, token, nx=True, px=self._ttl_ms):
                break
            if loop.time() >= deadline:
                raise RunBusy(f"thread {thread_id} is being worked on by another request right now; try again shortly")
            await asyncio.sleep(_ACQUIRE_POLL_S)
        hold = _Hold(thread_id, key, token, holder, extended_at=sent)
        keeper = asyncio.create_task(self._keep(hold), name=f"keep {key}")
        try:
            yield
        except asyncio.CancelledError:
            self._stop_keeping(hold, keeper)
            if hold.lost is None or hold.cancelled_elsewhere:
                raise  # not (only) our stop: a cancellation from outside propagates as such
            raise self._lost_error(hold) from None
        except Exception as exc:
            self._stop_keeping(hold, keeper)
            if hold.lost is None:
                raise
            raise self._lost_error(hold) from exc  # the block turned our stop into another error
        else:
            self._stop_keeping(hold, keeper)
            if hold.lost is not None:
                raise self._lost_error(hold)  # the block swallowed our stop: its work was not exclusive to the end
        finally:
            self._stop_keeping(hold, keeper)
            if hold.lost is not None:
                self._stopping.pop(holder, None)
            await _to_the_end(self._let_go(hold, keeper))

    @property
    def margin_s(self) -> float:
        """How long before its lock may expire a holder that cannot keep it is stopped: its time to wind down."""
        return self._margin_s

    async def is_held(self, thread_id: str) -> bool:
        return bool(await self._redis.exists(self._prefix + thread_id))

    async def held(self, thread_ids: Sequence[str]) -> set[str]:
        """Which of ``thread_ids`` someone holds now (one round trip)."""
        if not thread_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for thread_id in thread_ids:
                pipe.exists(self._prefix + thread_id)
            found = await pipe.execute()
        return {thread_id for thread_id, exists in zip(thread_ids, found, strict=True) if exists}

    def stop_reason(self) -> str | None:
        """Why the current task is being stopped because it lost its hold on a thread, or None. Lets code
        inside a ``hold()`` block tell this cancellation from others before ``hold()`` raises LockLost."""
        task = asyncio.current_task()
        return self._stopping.get(task) if task is not None else None

    async def _keep(self, hold: _Hold) -> None:
        loop = asyncio.get_running_loop()
        next_try = hold.extended_at + self._extend_every_s
        last_error = ""
        while not hold.closing:
            await asyncio.sleep(max(0.0, next_try - loop.time()))
            stop_at = hold.extended_at + self._ttl_s - self._margin_s
            sent = loop.time()
            if sent >= stop_at:
                waited = sent - hold.extended_at
                self._stop_holder(hold, f"no extension of its lock succeeded for {waited:.1f}s ({last_error})")
                return
            try:
                async with asyncio.timeout(min(self._attempt_s, stop_at - sent)):
                    extended = await self._redis.eval(_EXTEND, 1, hold.key, hold.token, self._ttl_ms)
            except Exception as exc:  # noqa: BLE001 - Redis slow or unreachable: try again soon, until stop_at
                last_error = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                log.debug("extending lock %s failed (%s); retrying", hold.key, last_error)
                next_try = min(loop.time() + self._retry_s, stop_at)
                continue
            if not extended:
                self._stop_holder(hold, "its lock expired or another process took it")
                return
            hold.extended_at = sent
            next_try = sent + self._extend_every_s

    def _stop_holder(self, hold: _Hold, reason: str) -> None:
        if hold.closing:
            return  # the block is already over; nothing left to stop
        hold.lost = reason
        self._stopping[hold.holder] = reason
        hold.holder.cancel(f"lost the lock on thread {hold.thread_id}: {reason}")

    @staticmethod
    def _stop_keeping(hold: _Hold, keeper: asyncio.Task[None]) -> None:
        """End the keeping (once): the keeper may no longer stop the holder, and our own stop, if any, is
        taken back so that only cancellations from elsewhere remain counted on the holder task."""
        if hold.closing:
            return
        hold.closing = True
        keeper.cancel()
        if hold.lost is not None:
            hold.cancelled_elsewhere = hold.holder.uncancel() > 0

    @staticmethod
    def _lost_error(hold: _Hold) -> LockLost:
        return LockLost(
            f"this process lost its hold on thread {hold.thread_id} ({hold.lost}) and stopped working on it; "
            "another process may carry on"
        )

    async def _let_go(self, hold: _Hold, keeper: asyncio.Task[None]) -> None:
        await asyncio.wait([keeper], timeout=self._attempt_s)
        await self._release(hold)

    async def _release(self, hold: _Hold) -> None:
        try:
            async with asyncio.timeout(self._attempt_s):
                await self._redis.eval(_RELEASE, 1, hold.key, hold.token)
        except Exception as exc:  # noqa: BLE001 - never raise over the block's own outcome
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "could not release lock %s (%s); it expires on its own within %.1fs", hold.key, reason, self._ttl_s
            )


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` (bounded in time) to its end even if this task is cancelled meanwhile, so a lock is
    released on every way out; such a cancellation is raised once the work is done."""
    task = asyncio.ensure_future(work)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted or task.cancelled():
        raise asyncio.CancelledError
    task.result()
