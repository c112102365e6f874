"""Runs waiting for a worker: a Redis stream with a consumer group, shared by every replica.

A request is admitted (the person's limit of queued and working runs), then added to the stream; each process
runs a bounded number of workers that read it with ``XREADGROUP``, so at most ``workers`` runs start and work at
once per process however many mentions arrive, and the next free worker of any replica takes the next run.

Nothing here is a queue protocol of our own: delivery, acknowledgement and handing over the work of a crashed
consumer are Redis's (the group's pending-entries list, ``XAUTOCLAIM``). What is ours is only what Slack's
semantics need: a worker keeps its entry claimed while the run works (so it is not handed over mid-run), and a
redelivered entry is started only if its run never started (a per-task marker compared with the run index), so a
crash at any moment neither loses a run nor starts one twice. Once a run has started, the run index, the
thread's lock and the sweeper's recovery own it; the entry is acknowledged and deleted when its worker is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from graphs.keys import DEFAULT_TTL_S, Keys

log = logging.getLogger(__name__)

GROUP = "workers"
READ_BLOCK_MS = 2000  # below the Redis client's socket timeout
CLAIM_IDLE_S = 30.0  # an entry unclaimed this long belongs to a consumer that died: another one takes it over
HEARTBEAT_S = 5.0  # how often a worker renews the claim on the entry it works on
USER_SLOT_S = 3600  # a person's slot lapses after this long even if its worker died without giving it back

# Take a slot among a person's queued and working runs, unless they hold ``limit`` already (lapsed ones are dropped
# first). KEYS: the person's zset. ARGV: run id, now, lapses at, limit (0: none). Returns how many they held.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local held = redis.call('ZCARD', KEYS[1])
if tonumber(ARGV[4]) > 0 and held >= tonumber(ARGV[4]) and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return held
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000))
return -1
"""


@dataclass(frozen=True)
class Job:
    """One queued task: which run, whose turn (the token the turn was claimed with), who asked what."""

    run_id: str
    token: str
    requester: str
    task: str
    queued_at: float

    def fields(self) -> dict[Any, Any]:  # redis-py's stream field types
        return {
            "run": self.run_id,
            "token": self.token,
            "requester": self.requester,
            "task": self.task,
            "at": repr(self.queued_at),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Job:
        return cls(fields["run"], fields["token"], fields["requester"], fields["task"], float(fields["at"]))


Handler = Callable[[Job], Awaitable[None]]
# Whether the run of a redelivered job started after ``since`` (its marker time): then it is not started again.
StartedSince = Callable[[str, float], Awaitable[bool]]


class RunQueue:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        workers: int,
        per_user: int,
        started_since: StartedSince,
        ttl_s: int = DEFAULT_TTL_S,
        claim_idle_s: float = CLAIM_IDLE_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.workers = workers
        self.per_user = per_user  # 0: no limit
        self._started_since = started_since
        self._ttl_s = ttl_s
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._busy = 0

    # --- asking -----------------------------------------------------------------------------------

    async def admit(self, user: str, run_id: str) -> int | None:
        """Take one of ``user``'s slots for ``run_id``; None if taken, else how many runs they have already."""
        held = int(
            await self._redis.eval(
                _ADMIT, 1, self._keys.active_runs(user), run_id, time.time(), time.time() + USER_SLOT_S, self.per_user
            )
        )
        return None if held < 0 else held

    async def release(self, user: str, run_id: str) -> None:
        """Give back ``user``'s slot of ``run_id`` (its run paused, ended, or never started)."""
        await self._redis.zrem(self._keys.active_runs(user), run_id)

    async def ahead(self) -> int | None:
        """None if a worker is free for a run asked now, else how many queued runs are ahead of it. Capacity is
        this process's worker count times the consumers that read lately (replicas run the same settings)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xinfo_groups(self._keys.run_queue)
                pipe.xinfo_consumers(self._keys.run_queue, GROUP)
                groups, consumers = await pipe.execute()
        except ResponseError:  # no stream or group yet: nobody works, so nothing is ahead either
            return None
        group: dict[str, Any] = next((g for g in groups if g.get("name") == GROUP), {})
        waiting, working = int(group.get("lag") or 0), int(group.get("pending") or 0)
        alive = sum(1 for c in consumers if int(c.get("idle") or 0) < 3 * READ_BLOCK_MS)
        capacity = max(1, alive) * self.workers
        return None if waiting + working < capacity else waiting

    async def put(self, job: Job) -> None:
        await self._redis.xadd(self._keys.run_queue, job.fields())

    # --- working ----------------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Start this process's workers."""
        try:
            await self._redis.xgroup_create(self._keys.run_queue, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._loops = [
            asyncio.create_task(self._worker(handler, n), name=f"run worker {n}") for n in range(self.workers)
        ]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Take no more work; let runs being started finish for up to ``timeout_s``, then stop."""
        self._stopping.set()
        if not self._loops:
            return
        _, pending = await asyncio.wait(self._loops, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        with contextlib.suppress(RedisError):
            # Gone from the group's consumers (so it no longer counts as capacity), unless it still holds entries:
            # deleting it would drop them, and another replica takes them over once they are idle.
            mine = await self._redis.xpending_range(self._keys.run_queue, GROUP, "-", "+", 1, self._consumer)
            if not mine:
                await self._redis.xgroup_delconsumer(self._keys.run_queue, GROUP, self._consumer)

    async def _worker(self, handler: Handler, n: int) -> None:
        last_claim = 0.0
        while not self._stopping.is_set():
            try:
                entry = None
                if time.monotonic() - last_claim >= self._claim_idle_ms / 2000:
                    last_claim = time.monotonic()
                    entry = await self._take_over()
                if entry is None:
                    entry = await self._read()
                if entry is not None:
                    await self._work(handler, *entry)
            except RedisError as exc:
                if n == 0:  # once per process, not once per worker
                    log.error("run workers: Redis is not answering (%s); trying again", type(exc).__name__)
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # a worker must outlive anything one run does
                log.exception("run worker %d failed; it goes on", n)

    async def _read(self) -> tuple[str, dict[str, str], bool] | None:
        found = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]],
            await self._redis.xreadgroup(
                GROUP, self._consumer, {self._keys.run_queue: ">"}, count=1, block=READ_BLOCK_MS
            ),
        )
        for _stream, entries in found or []:
            for entry_id, fields in entries:
                return entry_id, fields, False
        return None

    async def _take_over(self) -> tuple[str, dict[str, str], bool] | None:
        """One entry a dead consumer left claimed (idle past ``claim_idle_s``), now ours."""
        reply = await self._redis.xautoclaim(
            self._keys.run_queue, GROUP, self._consumer, self._claim_idle_ms, start_id="0-0", count=1
        )
        claimed = reply[1] if reply else []
        for entry_id, fields in claimed:
            if fields:  # an entry deleted meanwhile comes back without fields
                return entry_id, fields, True
            await self._redis.xack(self._keys.run_queue, GROUP, entry_id)
        return None

    async def _work(self, handler: Handler, entry_id: str, fields: dict[str, str], redelivered: bool) -> None:
        try:
            job = Job.from_fields(fields)
        except (KeyError, ValueError):
            log.error("dropped a malformed queue entry %s: %s", entry_id, sorted(fields))
            await self._done(entry_id)
            return
        marker = self._keys.queued_start(job.run_id, job.token)
        first = await self._redis.set(marker, repr(time.time()), nx=True, ex=self._ttl_s)
        if not first:
            since = float(await self._redis.get(marker) or 0)
            if await self._started_since(job.run_id, since):
                # Its worker died after the run started: the sweeper carries the run on; the entry is spent.
                log.info("queued run %s had started before its worker stopped; not starting it again", job.run_id)
                await self._done(entry_id)
                return
            log.warning("starting queued run %s again: its worker stopped before the run began", job.run_id)
        elif redelivered:
            log.warning("taking over queued run %s from a worker that stopped", job.run_id)
        heartbeat = asyncio.create_task(self._keep_claimed(entry_id))
        self._busy += 1
        try:
            await handler(job)
        finally:
            self._busy -= 1
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self._done(entry_id)

    async def _keep_claimed(self, entry_id: str) -> None:
        """Renew our claim while the run works, so no other consumer takes the entry over mid-run."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._redis.xclaim(self._keys.run_queue, GROUP, self._consumer, 0, [entry_id], justid=True)
            except RedisError as exc:
                log.warning("could not renew the claim on queue entry %s (%s)", entry_id, type(exc).__name__)

    async def _done(self, entry_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.run_queue, GROUP, entry_id)
            pipe.xdel(self._keys.run_queue, entry_id)
            await pipe.execute()
