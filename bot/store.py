"""What the bot keeps in Redis about the Slack side of runs: threads, run records, turns, dialogs, dedupe.

Key names come from ``graphs.keys.Keys`` (its docstring has the table of every key).
"""

from __future__ import annotations

import json
import secrets
import string
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

from redis.asyncio import Redis

from graphs.keys import DEFAULT_TTL_S, Keys
from graphs.types import Decision, PendingReview

from .progress import Progress

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
_EXTEND_TURN = """
local holder = redis.call('GET', KEYS[1])
if holder and cjson.decode(holder)['token'] == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_TURN = """
local holder = redis.call('GET', KEYS[1])
if holder and cjson.decode(holder)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_run_id() -> str:
    return "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))


@dataclass(frozen=True)
class RunRecord:
    """The Slack side of one run, as stored in its ``slack:run`` hash (every field a string there)."""

    run_id: str
    channel: str = ""  # where the run's thread is
    thread_ts: str = ""  # the thread's root message
    progress_ts: str = ""  # the progress message the bot keeps editing
    requester: str = ""  # who asked for the current task (a Slack user ID)
    task: str = ""  # what they asked, as typed
    progress: str = ""  # the progress message's state (Progress.to_json), so any replica renders it on
    card_ts: str = ""  # the approval card on Slack for the review ``card_interrupt``…
    card_channel: str = ""  # …and the channel it is in
    card_interrupt: str = ""  # the review (interrupt id) that card answers
    card_for: str = ""  # the review whose card is being delivered (attempts and retry time below)
    card_attempts: int = 0  # failed posts of that card so far
    card_retry_at: float = 0.0  # when a sweeper may try posting it again (epoch s; 0: not scheduled)
    card_link: str = ""  # the card's permalink, asked of Slack once when it was posted
    card_gone: str = ""  # the ts of a card Slack said is gone (deleted, or the workspace was reset)

    @classmethod
    def from_hash(cls, run_id: str, data: dict[str, str]) -> RunRecord:
        known = {f.name for f in fields(cls)} - {"run_id"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        values["card_attempts"] = int(values.get("card_attempts") or 0)
        values["card_retry_at"] = float(values.get("card_retry_at") or 0)
        return cls(run_id, **values)

    def progress_state(self) -> Progress:
        """The progress message's state, or a fresh one if it was never saved."""
        return (
            Progress.from_json(self.progress)
            if self.progress
            else Progress(self.run_id, self.requester or None, self.task)
        )

    def card(self, interrupt_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the card posted for this review, if it is on Slack."""
        if self.card_interrupt == interrupt_id and self.card_ts:
            return self.card_channel or self.channel, self.card_ts
        return None

    @property
    def card_is_gone(self) -> bool:
        """Slack said the current card is gone: nobody can decide it any more."""
        return bool(self.card_ts) and self.card_gone == self.card_ts


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
    kind: str  # "edit" or "reject"
    thread_ts: str = ""  # the card's thread, where answers about it go


_RECORD_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"run_id"}


class SlackStore:
    """The Slack side of runs in Redis. ``redis`` decodes replies (``decode_responses=True``, as graphs.runtime
    makes it): they are str, which redis-py's types cannot know, hence the casts."""

    def __init__(self, redis: Redis, *, keys: Keys | None = None, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = redis
        self._keys = keys or Keys()
        self._ttl_s = ttl_s

    async def first_delivery(self, event_id: str) -> bool:
        """True the first time an event id is seen, across every replica sharing this Redis."""
        return bool(await self.redis.set(self._keys.event(event_id), 1, nx=True, ex=EVENT_DEDUPE_S))

    async def run_for_thread(self, channel: str, thread_ts: str) -> str | None:
        return cast(str | None, await self.redis.get(self._keys.slack_thread(channel, thread_ts)))

    async def claim_thread(self, channel: str, thread_ts: str, run_id: str) -> str:
        """Bind a Slack thread to a run; if another request bound it first, return that run's id."""
        key = self._keys.slack_thread(channel, thread_ts)
        if await self.redis.set(key, run_id, nx=True, ex=self._ttl_s):
            return run_id
        return cast(str | None, await self.redis.get(key)) or run_id

    async def claim_turn(self, run_id: str, *, requester: str, task: str) -> Turn:
        """Claim the run's turn for ``requester``'s ``task``, unless someone holds it (then: who, and what)."""
        token = uuid.uuid4().hex
        won, raw = await self.redis.eval(
            _CLAIM_TURN, 1, self._keys.turn(run_id), token, requester, task, TURN_CLAIM_S * 1000
        )
        holder = json.loads(raw)
        return Turn(holder["requester"], holder["task"], holder["token"], mine=bool(won))

    async def extend_turn(self, run_id: str, turn: Turn, seconds: float) -> None:
        """Keep holding the turn for ``seconds`` more (while its task waits in the queue)."""
        await self.redis.eval(_EXTEND_TURN, 1, self._keys.turn(run_id), turn.token, int(seconds * 1000))

    async def release_turn(self, run_id: str, turn: Turn) -> None:
        await self.redis.eval(_RELEASE_TURN, 1, self._keys.turn(run_id), turn.token)

    # --- the run record -----------------------------------------------------------------------

    async def run(self, run_id: str) -> RunRecord | None:
        data = cast(dict[str, str], await self.redis.hgetall(self._keys.slack_run(run_id)))
        return RunRecord.from_hash(run_id, data) if data else None

    async def update(self, run_id: str, **changes: Any) -> None:
        """Set some fields of the run's record (names as in RunRecord); the record's TTL starts again."""
        unknown = set(changes) - _RECORD_FIELDS
        if unknown:
            raise TypeError(f"RunRecord has no fields {sorted(unknown)}")
        key = self._keys.slack_run(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: "" if v is None else v for k, v in changes.items()})
            pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def save_progress(self, run_id: str, progress: Progress) -> None:
        await self.update(run_id, progress=progress.to_json())

    async def run_fields(self, run_ids: list[str], *names: str) -> list[dict[str, str]]:
        """Some fields of many run records, in one round trip ("" for a field or record that is not there)."""
        if not run_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self._keys.slack_run(run_id), list(names))
            rows = await pipe.execute()
        return [{name: value or "" for name, value in zip(names, row, strict=True)} for row in rows]

    # --- the listing of waiting reviews (read-only) ---------------------------------------------

    async def pending_page(self, count: int | None = None) -> tuple[int, list[tuple[str, float]]]:
        """How many runs the run index lists as waiting for a review, and the first ``count`` of them (all with
        None), oldest first, each with when its review was asked: the index's ``pending`` zset and its scores,
        in one round trip, without reading a single review.

        This reads graphs.run_index's keys (read-only) because ``Runs.pending()`` reads every review, one round
        trip each, whatever is shown. Entries whose run expired are dropped by the index when it lists them
        (the sweeper does so every few seconds); here they are skipped by ``pending_details``."""
        stop = -1 if count is None else max(0, count) - 1
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._keys.pending)
            pipe.zrange(self._keys.pending, 0, stop, withscores=True)
            total, entries = await pipe.execute()
        if count == 0:
            entries = []
        return int(total), [(str(member), float(score)) for member, score in entries]

    async def pending_details(self, run_ids: list[str]) -> list[tuple[RunRecord | None, PendingReview | None]]:
        """The run record and the listed review of each run, in one round trip; None for what is not there (a
        review that is None: the listing outlived its run)."""
        if not run_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self._keys.slack_run(run_id))
                pipe.hget(self._keys.run(run_id), "pending")  # graphs.run_index's copy of the review (JSON)
            replies = await pipe.execute()
        details: list[tuple[RunRecord | None, PendingReview | None]] = []
        for n, run_id in enumerate(run_ids):
            data, raw = replies[2 * n], replies[2 * n + 1]
            record = RunRecord.from_hash(run_id, data) if data else None
            details.append((record, PendingReview(**json.loads(raw)) if raw else None))
        return details

    # --- dialogs --------------------------------------------------------------------------------

    async def bind_view(self, view_id: str, binding: ViewBinding) -> None:
        """Remember a dialog the bot opens (by the external id it gives the view) for whom and which card."""
        await self.redis.set(self._keys.view(view_id), json.dumps(asdict(binding)), ex=VIEW_BINDING_S)

    async def view_binding(self, view_id: str) -> ViewBinding | None:
        raw = await self.redis.get(self._keys.view(view_id))
        return ViewBinding(**json.loads(raw)) if raw else None

    async def unbind_view(self, view_id: str) -> bool:
        """Forget a dialog once submitted; False if it was already (a replayed submission)."""
        return bool(await self.redis.delete(self._keys.view(view_id)))

    # --- cards that need several approvers ----------------------------------------------------

    async def propose(self, run_id: str, interrupt_id: str, proposal: list[Decision]) -> list[Decision]:
        """Record the first approver's decisions for a card; return the proposal that stands (first wins)."""
        key = self._keys.proposal(run_id, interrupt_id)
        await self.redis.set(key, json.dumps(proposal), nx=True, ex=self._ttl_s)
        raw = await self.redis.get(key)
        return json.loads(raw) if raw else proposal

    async def proposal(self, run_id: str, interrupt_id: str) -> list[Decision] | None:
        raw = await self.redis.get(self._keys.proposal(run_id, interrupt_id))
        return json.loads(raw) if raw else None

    async def add_approver(self, run_id: str, interrupt_id: str, user: str) -> tuple[bool, list[str]]:
        """Count ``user`` once; return whether they were new and everyone who approved, in order."""
        key = self._keys.approved_by(run_id, interrupt_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {user: time.time()}, nx=True)
            pipe.expire(key, self._ttl_s)
            pipe.zrange(key, 0, -1)
            added, _, everyone = await pipe.execute()
        return bool(added), list(everyone)

    async def approvers(self, run_id: str, interrupt_id: str) -> list[str]:
        return cast(list[str], await self.redis.zrange(self._keys.approved_by(run_id, interrupt_id), 0, -1))
