"""Where the bot keeps its Slack-side facts in Redis: which Slack thread is which run, its messages, dedupe."""

from __future__ import annotations

import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
EVENT_DEDUPE_S = 3600  # Slack retries for up to ~6 min; keep ids an hour
# A turn is claimed from the moment a mention is read until its run holds the thread's lock (or ended); if the
# process dies in between, the claim lapses after this long and the thread takes new requests again.
TURN_CLAIM_S = 120
VIEW_BINDING_S = 3600  # a dialog the bot opened can be submitted for an hour

# Claim a run's turn with who asked for what, in one step: a second mention a few ms later finds the claim
# (and the first requester's task) and is refused. Only the holder of the turn ever writes the run record's
# requester and task, so they cannot be swapped. KEYS: turn key. ARGV: token, requester, task, claim ms.
# Returns {1, claim json} or {0, holder json}.
_CLAIM_TURN = """
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local claim = cjson.encode({token = ARGV[1], requester = ARGV[2], task = ARGV[3]})
redis.call('SET', KEYS[1], claim, 'PX', ARGV[4])
return {1, claim}
"""
_RELEASE_TURN = """
local holder = redis.call('GET', KEYS[1])
if holder and cjson.decode(holder)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Turn:
    """Who holds a run's turn: the request being set up or run right now."""

    requester: str
    task: str
    token: str
    mine: bool  # True: this call claimed it; False: someone else holds it


@dataclass(frozen=True)
class ViewBinding:
    """A dialog the bot opened: for whom, on which card, of which kind."""

    user: str
    run_id: str
    interrupt_id: str
    channel: str
    card_ts: str
    kind: str


def new_run_id() -> str:
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))


class SlackStore:
    def __init__(self, redis: Redis, *, prefix: str = "chatops:slack:", ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _run(self, run_id: str) -> str:
        return f"{self._prefix}run:{run_id}"

    def _thread(self, channel: str, thread_ts: str) -> str:
        return f"{self._prefix}thread:{channel}:{thread_ts}"

    async def first_delivery(self, event_id: str) -> bool:
        """True the first time an event id is seen, across every replica sharing this Redis."""
        return bool(await self.redis.set(f"{self._prefix}event:{event_id}", 1, nx=True, ex=EVENT_DEDUPE_S))

    async def run_for_thread(self, channel: str, thread_ts: str) -> str | None:
        return await self.redis.get(self._thread(channel, thread_ts))

    async def claim_thread(self, channel: str, thread_ts: str, run_id: str) -> str:
        """Bind a Slack thread to a run; if another request bound it first, return that run's id."""
        key = self._thread(channel, thread_ts)
        if await self.redis.set(key, run_id, nx=True, ex=self._ttl_s):
            return run_id
        return await self.redis.get(key) or run_id

    async def claim_turn(self, run_id: str, *, requester: str, task: str) -> Turn:
        """Claim the run's turn for ``requester``'s ``task``, unless someone holds it (then: who, and what)."""
        token = uuid.uuid4().hex
        won, raw = await self.redis.eval(
            _CLAIM_TURN, 1, f"{self._prefix}turn:{run_id}", token, requester, task, TURN_CLAIM_S * 1000
        )
        holder = json.loads(raw)
        return Turn(holder["requester"], holder["task"], holder["token"], mine=bool(won))

    async def release_turn(self, run_id: str, turn: Turn) -> None:
        await self.redis.eval(_RELEASE_TURN, 1, f"{self._prefix}turn:{run_id}", turn.token)

    async def bind_view(self, view_id: str, binding: ViewBinding) -> None:
        await self.redis.set(f"{self._prefix}view:{view_id}", json.dumps(binding.__dict__), ex=VIEW_BINDING_S)

    async def view_binding(self, view_id: str) -> ViewBinding | None:
        raw = await self.redis.get(f"{self._prefix}view:{view_id}")
        return ViewBinding(**json.loads(raw)) if raw else None

    async def unbind_view(self, view_id: str) -> bool:
        """Forget a dialog once submitted; False if it was already (a replayed submission)."""
        return bool(await self.redis.delete(f"{self._prefix}view:{view_id}"))

    async def save_run(self, run_id: str, **fields: Any) -> None:
        key = self._run(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: "" if v is None else v for k, v in fields.items()})
            pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def run(self, run_id: str) -> dict[str, str]:
        return await self.redis.hgetall(self._run(run_id))

    # --- cards that need several approvers ----------------------------------------------------

    def _approvals(self, run_id: str, interrupt_id: str) -> tuple[str, str]:
        base = f"{self._prefix}approvals:{run_id}:{interrupt_id}"
        return f"{base}:proposal", f"{base}:by"

    async def propose(self, run_id: str, interrupt_id: str, proposal: str) -> str:
        """Record the first approver's decisions for a card; return the proposal that stands (first wins)."""
        key, _ = self._approvals(run_id, interrupt_id)
        await self.redis.set(key, proposal, nx=True, ex=self._ttl_s)
        return await self.redis.get(key) or proposal

    async def proposal(self, run_id: str, interrupt_id: str) -> str | None:
        return await self.redis.get(self._approvals(run_id, interrupt_id)[0])

    async def add_approver(self, run_id: str, interrupt_id: str, user: str) -> tuple[bool, list[str]]:
        """Count ``user`` once; return whether they were new and everyone who approved, in order."""
        _, key = self._approvals(run_id, interrupt_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {user: time.time()}, nx=True)
            pipe.expire(key, self._ttl_s)
            pipe.zrange(key, 0, -1)
            added, _, everyone = await pipe.execute()
        return bool(added), list(everyone)

    async def approvers(self, run_id: str, interrupt_id: str) -> list[str]:
        return list(await self.redis.zrange(self._approvals(run_id, interrupt_id)[1], 0, -1))
