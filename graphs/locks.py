"""A per-thread lock in Redis, so exactly one process runs a given thread at a time.

``SET key token NX PX ttl`` to take it; a background task extends it while the holder works (runs can
take minutes); a compare-and-delete script releases it only if we still own it. If the holder dies,
the lock expires after ``ttl_ms`` and the thread can be resumed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from .errors import RunBusy

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class ThreadLocks:
    def __init__(self, redis: Redis, *, prefix: str = "chatops:lock:", ttl_ms: int = 15_000) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = ttl_ms

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, *, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the thread's lock for the block; raise RunBusy if another holder keeps it past ``wait_s``."""
        key = self._prefix + thread_id
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not await self._redis.set(key, token, nx=True, px=self._ttl_ms):
            if loop.time() >= deadline:
                raise RunBusy(f"thread {thread_id} is being worked on by another request right now; try again shortly")
            await asyncio.sleep(0.05)
        keeper = asyncio.create_task(self._keep(key, token))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._redis.eval(_RELEASE, 1, key, token)

    async def is_held(self, thread_id: str) -> bool:
        return bool(await self._redis.exists(self._prefix + thread_id))

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            await self._redis.eval(_EXTEND, 1, key, token, self._ttl_ms)
