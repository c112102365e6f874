"""The run index: a fast listing of runs, kept beside their checkpoints.

It owns the ``{p}run:{thread}`` hash, the ``{p}pending`` and ``{p}running`` zsets and the ``{p}cancel:{thread}``
flag (see graphs.keys). It answers "which reviews are waiting?", "which runs were cut off mid-way?" and "what was
this run?" without loading a single checkpoint, and carries a cancel request from any process to the one driving
the thread.

**The checkpoint is the source of truth** for whether a thread waits for a review. The index is written after
the checkpoint and may lag it (a process stopped between the two writes) or outlive it, so ``Runs`` reads the
checkpoint, inside the thread's lock, before it acts on a review; the index only lists. Hence
``Runs.pending()`` lists from the index, while ``Runs.pending_review(thread)`` reads the thread's checkpoint.

The fields of a run (strings in Redis; times are epoch seconds):

- ``task``: what was asked, as typed; ``requester``: who asked ("" if nobody said).
- ``status``: a ``RunStatus`` (running, waiting, done, failed, cancelled, expired).
- ``created_at``: when the thread's first task started; ``updated_at``: the last write.
- ``report``: the final report (its first 4,000 characters); ``error``: why it failed (redacted, 2,000).
- ``pending``: the review it waits for, a ``PendingReview`` as JSON, while it is listed as pending.
- ``rewound_by``, ``rewound_to``: who rewound it last, to which checkpoint; ``cancelled_by``: who cancelled it.
- ``recovered_at``: when a replica last carried it on after its process stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Protocol, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from .keys import DEFAULT_TTL_S, Keys
from .types import PendingReview

# Stored as the cancel flag's value when nobody was named, so the flag is never an empty string.
_NOBODY = "-"


class RunIndex(Protocol):
    """What ``Runs`` keeps beside the checkpoints, one backend per class below."""

    async def begin(self, thread_id: str, at: float) -> None:
        """Note when the thread's first task started (kept as it is for a follow-up task)."""

    async def update(self, thread_id: str, **fields: str | float | None) -> None:
        """Set fields of the run (None is stored as ""), stamp ``updated_at`` and refresh its lifetime."""

    async def read(self, thread_id: str) -> dict[str, str]:
        """Every field of the run; empty if there is none (never started, or expired)."""

    async def list_pending(self, review: PendingReview) -> None:
        """The run waits for ``review``: status waiting, the review kept with it, listed by when it was asked."""

    async def clear_pending(self, thread_id: str) -> None:
        """The thread waits for no review any more (answered, rewound, ended)."""

    async def pending(self) -> list[PendingReview]:
        """Every listed review, oldest first; entries whose run expired are dropped on the way."""

    async def mark_running(self, thread_id: str, at: float) -> None:
        """A process is about to drive the thread."""

    async def clear_running(self, thread_id: str) -> None:
        """No process needs to drive the thread any more (it stopped where it should)."""

    async def running(self) -> list[str]:
        """Threads marked running, oldest mark first."""

    async def request_cancel(self, thread_id: str, by: str | None, ttl_s: int) -> None:
        """Ask whichever process drives the thread to stop it; the request lapses after ``ttl_s``."""

    async def cancel_request(self, thread_id: str) -> str | None:
        """Who asked to stop the thread ("" if nobody was named), or None if nobody did."""

    async def clear_cancel(self, thread_id: str) -> None:
        """Forget a cancel request (the run was stopped, or a new turn starts)."""

    # Each of these is one atomic write (a MULTI/EXEC in Redis): a run is never seen half moved, and costs one
    # round trip instead of one per field.

    async def open_turn(self, thread_id: str, at: float, **fields: str | float | None) -> None:
        """A new task starts on the thread: ``begin``, set ``fields``, clear a cancel request, mark it running."""

    async def take(
        self, thread_id: str, at: float, *, clear_cancel: bool = False, **fields: str | float | None
    ) -> None:
        """A process is about to drive the thread on: marked running, its review (if any) no longer listed, ``fields``
        set; with ``clear_cancel``, an old cancel request forgotten."""

    async def pause(self, review: PendingReview) -> None:
        """The run stopped to wait for ``review``: ``list_pending`` and no longer running."""

    async def close(self, thread_id: str, **fields: str | float | None) -> None:
        """The run ended (done, failed, cancelled...): no review listed, no longer running, ``fields`` set."""


class RedisRunIndex:
    """The index of one deployment (``keys``); a run's hash is kept ``ttl_s`` after its last write.

    ``redis`` decodes replies (``decode_responses=True``, as graphs.runtime makes it): they are str, which
    redis-py's types cannot know, hence the casts."""

    def __init__(self, redis: Redis, keys: Keys = Keys(), *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def begin(self, thread_id: str, at: float) -> None:
        await self._redis.hsetnx(self._keys.run(thread_id), "created_at", at)

    async def update(self, thread_id: str, **fields: str | float | None) -> None:
        key = self._keys.run(thread_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_stored({**fields, "updated_at": time.time()}))
            pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def read(self, thread_id: str) -> dict[str, str]:
        return cast(dict[str, str], await self._redis.hgetall(self._keys.run(thread_id)))

    async def list_pending(self, review: PendingReview) -> None:
        await self.update(review.thread_id, status="waiting", pending=_review_json(review))
        await self._redis.zadd(self._keys.pending, {review.thread_id: review.created_at})

    async def clear_pending(self, thread_id: str) -> None:
        await self._redis.zrem(self._keys.pending, thread_id)
        await self._redis.hdel(self._keys.run(thread_id), "pending")

    async def pending(self) -> list[PendingReview]:
        threads = cast(list[str], await self._redis.zrange(self._keys.pending, 0, -1))
        if not threads:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for thread_id in threads:
                pipe.hget(self._keys.run(thread_id), "pending")
            raws = cast(list[str | None], await pipe.execute())
        reviews = [_review_from_json(raw) for raw in raws if raw]
        expired = [thread_id for thread_id, raw in zip(threads, raws, strict=True) if not raw]
        if expired:  # those runs expired: drop them from the listing
            await self._redis.zrem(self._keys.pending, *expired)
        return reviews

    async def mark_running(self, thread_id: str, at: float) -> None:
        await self._redis.zadd(self._keys.running, {thread_id: at})

    async def clear_running(self, thread_id: str) -> None:
        await self._redis.zrem(self._keys.running, thread_id)

    async def running(self) -> list[str]:
        return cast(list[str], await self._redis.zrange(self._keys.running, 0, -1))

    async def request_cancel(self, thread_id: str, by: str | None, ttl_s: int) -> None:
        await self._redis.set(self._keys.cancel(thread_id), by or _NOBODY, ex=ttl_s)

    async def cancel_request(self, thread_id: str) -> str | None:
        by = cast(str | None, await self._redis.get(self._keys.cancel(thread_id)))
        return None if by is None else "" if by == _NOBODY else by

    async def clear_cancel(self, thread_id: str) -> None:
        await self._redis.delete(self._keys.cancel(thread_id))

    async def open_turn(self, thread_id: str, at: float, **fields: str | float | None) -> None:
        key = self._keys.run(thread_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "created_at", at)
            self._set(pipe, thread_id, fields)
            pipe.delete(self._keys.cancel(thread_id))
            pipe.zadd(self._keys.running, {thread_id: at})
            await pipe.execute()

    async def take(
        self, thread_id: str, at: float, *, clear_cancel: bool = False, **fields: str | float | None
    ) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._keys.running, {thread_id: at})
            pipe.zrem(self._keys.pending, thread_id)
            pipe.hdel(self._keys.run(thread_id), "pending")
            if clear_cancel:
                pipe.delete(self._keys.cancel(thread_id))
            self._set(pipe, thread_id, fields)
            await pipe.execute()

    async def pause(self, review: PendingReview) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self._set(pipe, review.thread_id, {"status": "waiting", "pending": _review_json(review)})
            pipe.zadd(self._keys.pending, {review.thread_id: review.created_at})
            pipe.zrem(self._keys.running, review.thread_id)
            await pipe.execute()

    async def close(self, thread_id: str, **fields: str | float | None) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.pending, thread_id)
            pipe.hdel(self._keys.run(thread_id), "pending")
            self._set(pipe, thread_id, fields)
            pipe.zrem(self._keys.running, thread_id)
            await pipe.execute()

    def _set(self, pipe: Pipeline, thread_id: str, fields: Mapping[str, str | float | None]) -> None:
        key = self._keys.run(thread_id)
        pipe.hset(key, mapping=_stored({**fields, "updated_at": time.time()}))
        pipe.expire(key, self._ttl_s)


class MemoryRunIndex:
    """For a single process without Redis (unit tests): the same answers, and nothing ever expires."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, str]] = {}
        self._pending: dict[str, float] = {}
        self._running: dict[str, float] = {}
        self._cancels: dict[str, str] = {}

    async def begin(self, thread_id: str, at: float) -> None:
        self._runs.setdefault(thread_id, {}).setdefault("created_at", str(at))

    async def update(self, thread_id: str, **fields: str | float | None) -> None:
        stored = {**fields, "updated_at": time.time()}
        self._runs.setdefault(thread_id, {}).update(
            {name: "" if value is None else str(value) for name, value in stored.items()}
        )

    async def read(self, thread_id: str) -> dict[str, str]:
        return dict(self._runs.get(thread_id, {}))

    async def list_pending(self, review: PendingReview) -> None:
        await self.update(review.thread_id, status="waiting", pending=_review_json(review))
        self._pending[review.thread_id] = review.created_at

    async def clear_pending(self, thread_id: str) -> None:
        self._pending.pop(thread_id, None)
        self._runs.get(thread_id, {}).pop("pending", None)

    async def pending(self) -> list[PendingReview]:
        return [_review_from_json(self._runs[t]["pending"]) for t in _by_score(self._pending)]

    async def mark_running(self, thread_id: str, at: float) -> None:
        self._running[thread_id] = at

    async def clear_running(self, thread_id: str) -> None:
        self._running.pop(thread_id, None)

    async def running(self) -> list[str]:
        return _by_score(self._running)

    async def request_cancel(self, thread_id: str, by: str | None, ttl_s: int) -> None:
        self._cancels[thread_id] = by or ""

    async def cancel_request(self, thread_id: str) -> str | None:
        return self._cancels.get(thread_id)

    async def clear_cancel(self, thread_id: str) -> None:
        self._cancels.pop(thread_id, None)

    async def open_turn(self, thread_id: str, at: float, **fields: str | float | None) -> None:
        await self.begin(thread_id, at)
        await self.update(thread_id, **fields)
        await self.clear_cancel(thread_id)
        await self.mark_running(thread_id, at)

    async def take(
        self, thread_id: str, at: float, *, clear_cancel: bool = False, **fields: str | float | None
    ) -> None:
        await self.mark_running(thread_id, at)
        await self.clear_pending(thread_id)
        if clear_cancel:
            await self.clear_cancel(thread_id)
        await self.update(thread_id, **fields)

    async def pause(self, review: PendingReview) -> None:
        await self.list_pending(review)
        await self.clear_running(review.thread_id)

    async def close(self, thread_id: str, **fields: str | float | None) -> None:
        await self.clear_pending(thread_id)
        await self.update(thread_id, **fields)
        await self.clear_running(thread_id)


def _stored(fields: Mapping[str, str | float | None]) -> dict[FieldT, EncodableT]:
    """The fields as a Redis hash keeps them: None as ""."""
    return {name: "" if value is None else value for name, value in fields.items()}


def _review_json(review: PendingReview) -> str:
    return json.dumps(asdict(review))


def _review_from_json(raw: str) -> PendingReview:
    return PendingReview(**json.loads(raw))


def _by_score(members: dict[str, float]) -> list[str]:
    """A zset's members in Redis's order: by score, ties by name."""
    return [member for member, _ in sorted(members.items(), key=lambda item: (item[1], item[0]))]
