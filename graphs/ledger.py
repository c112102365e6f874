"""At-most-once execution of approved tool calls, whatever re-runs the execute step.

The execute node claims ``<thread>:<review task>:<tool call id>`` before running a call. A re-run of
the same step (a crash mid-execute and a resume, or a second resume that slipped past the lock) finds
the claim and reuses the recorded result instead of running the side effect again. A rewind creates a
new review task, hence new keys: a call re-approved after a rewind runs again, as it should.
"""

from __future__ import annotations

import json
from typing import Protocol

from redis.asyncio import Redis

from .keys import DEFAULT_TTL_S, Keys


class ExecutionLedger(Protocol):
    async def claim(self, key: str) -> bool: ...
    async def record(self, key: str, ok: bool, output: str) -> None: ...
    async def result(self, key: str) -> tuple[bool, str] | None: ...


_STARTED = "started"


class RedisLedger:
    """One key per call under ``prefix`` (a deployment's ``Keys.ledger_prefix``), kept ``ttl_s``."""

    def __init__(self, redis: Redis, *, prefix: str = Keys().ledger_prefix, ttl_s: int | None = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    async def claim(self, key: str) -> bool:
        return bool(await self._redis.set(self._prefix + key, _STARTED, nx=True, ex=self._ttl_s))

    async def record(self, key: str, ok: bool, output: str) -> None:
        await self._redis.set(self._prefix + key, json.dumps({"ok": ok, "output": output}), ex=self._ttl_s)

    async def result(self, key: str) -> tuple[bool, str] | None:
        raw = await self._redis.get(self._prefix + key)
        if raw is None or raw in (_STARTED, _STARTED.encode()):
            return None
        data = json.loads(raw)
        return data["ok"], data["output"]


class MemoryLedger:
    """For a single process without Redis (unit tests, the terminal demo)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[bool, str] | None] = {}

    async def claim(self, key: str) -> bool:
        if key in self._entries:
            return False
        self._entries[key] = None
        return True

    async def record(self, key: str, ok: bool, output: str) -> None:
        self._entries[key] = (ok, output)

    async def result(self, key: str) -> tuple[bool, str] | None:
        return self._entries.get(key)
