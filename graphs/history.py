"""What a thread's checkpoints say in words: a one-line summary of each, and the calls one left unanswered.

``describe`` turns a checkpoint (a ``StateSnapshot``) into its history line. Those lines are kept, per thread, in
a ``HistoryIndex`` (one Redis hash, checkpoint id -> line), written from what the graph streams while it runs
(``from_stream``), so the history of a long thread is read in one round trip instead of loading every checkpoint's
whole state. A line says what a checkpoint holds, and a checkpoint never changes, except that an approval point
gains its interrupt when the review asks (``waiting``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, cast

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot
from redis.asyncio import Redis

from .agent import last_ai_message, message_text
from .keys import DEFAULT_TTL_S, Keys
from .tools import summarize_args
from .types import CheckpointInfo

WAITING = "waiting for approval"  # the stage of an approval point whose review asked
# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000

# What the graph does next at a checkpoint, in the words of someone who never saw the graph.
STAGES = {
    "__start__": "starting",
    "planner": "asking the model",
    "review": "reviewing the proposed calls",
    "execute": "running the allowed calls",
    "report": "writing the answer",
}


def describe(snapshot: StateSnapshot) -> CheckpointInfo:
    """The checkpoint as a history line: where the run stood there and what happened just before, in one line."""
    values = snapshot.values or {}
    messages = values.get("messages", [])
    metadata: dict[str, Any] = dict(snapshot.metadata or {})
    step = int(metadata.get("step", -1))
    nxt = tuple(snapshot.next)
    ai = last_ai_message(messages)
    results = [m for m in messages[messages.index(ai) + 1 :] if isinstance(m, ToolMessage)] if ai else []
    last_review = values.get("reviews", [])[-1:] or [None]
    decided = {c["tool_call_id"]: c for c in (last_review[0] or {}).get("calls", [])}

    def result(m: ToolMessage) -> str:
        record = decided.get(m.tool_call_id, {})
        if record.get("mode") == "repeat":
            return "already done"
        if record.get("decision") == "reject":
            return "rejected"
        return "failed" if m.status == "error" else "ok"

    ran = ", ".join(f"{m.name} {result(m)}" for m in results)
    decided_by: tuple[str, ...] = ()
    if metadata.get("source") == "input" or not messages:
        summary = "task received"
    elif nxt == ("review",) and ai is not None:
        if results:
            waiting = [c["name"] for c in ai.tool_calls if c["id"] not in {m.tool_call_id for m in results}]
            summary = f"read-only calls finished ({ran}); still to review: {', '.join(waiting)}"
        else:
            proposed = ", ".join(f"{c['name']}({summarize_args(c['args'], 60)})" for c in ai.tool_calls)
            summary = f"the model proposed {proposed}"
    elif (
        nxt in (("execute",), ("planner",), ("report",))
        and last_review[0]
        and _just_reviewed(messages, ai, last_review[0])
    ):
        summary, decided_by = "decided: " + _decisions_line(last_review[0]), _people(last_review[0])
    elif nxt == ("planner",) and isinstance(messages[-1], HumanMessage):
        summary = f"task: {message_text(messages[-1])}"
    elif nxt == ("planner",):
        summary = f"calls finished: {ran}" if ran else "back to the model"
    elif nxt == ("report",) and ai is not None:
        summary = f"the model answered: {message_text(ai)}"
    elif not nxt:
        outcome = values.get("outcome") or "done"
        detail = values.get("report") or values.get("detail") or ""
        summary = f"ended, {outcome}" + (f": {detail}" if detail else "")
    else:
        summary = "next: " + ", ".join(STAGES.get(n, n) for n in nxt)
    if nxt == ("review",) and snapshot.interrupts:
        stage = WAITING
    elif not nxt:
        stage = "ended"
    else:
        stage = ", ".join(STAGES.get(n, n) for n in nxt)
    parent = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=step,
        next=nxt,
        created_at=snapshot.created_at or "",
        summary=" ".join(summary.split()),  # one line: a task or an answer of several lines stays one bullet
        parent_id=parent,
        metadata={"source": metadata.get("source", "")},
        decided_by=decided_by,
        stage=stage,
    )


def _just_reviewed(messages: list[Any], ai: Any, review: dict[str, Any] | None) -> bool:
    """Whether the last thing that happened is ``review``: it reviewed the last model message's calls, and none of
    the calls it allowed has run yet."""
    if (
        ai is None
        or review is None
        or not {c["id"] for c in ai.tool_calls} & {c["tool_call_id"] for c in review["calls"]}
    ):
        return False
    allowed = {c["tool_call_id"] for c in review["calls"] if c["decision"] != "reject"}
    after = messages[messages.index(ai) + 1 :]
    return not any(isinstance(m, ToolMessage) and m.tool_call_id in allowed for m in after)


def _people(review: dict[str, Any]) -> tuple[str, ...]:
    if not any(c["mode"] == "ask" for c in review["calls"]):
        return ()
    return tuple(p for p in str(review.get("decided_by") or "").split(",") if p)


def close_open_calls(snapshot: StateSnapshot, reason: str) -> list[ToolMessage]:
    """Tool results for the calls of the checkpoint's last proposal that never ran, each saying ``reason``, so a
    later turn's model request stays well-formed."""
    messages = snapshot.values.get("messages", [])
    ai = last_ai_message(messages)
    if ai is None:
        return []
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [
        ToolMessage(reason, tool_call_id=c["id"], name=c["name"], status="error")
        for c in ai.tool_calls
        if c["id"] not in answered
    ]


def _decisions_line(review: dict[str, Any]) -> str:
    words = {"approve": "approved", "edit": "edited and approved", "reject": "rejected"}

    def word(call: dict[str, Any]) -> str:
        return "already done" if call.get("mode") == "repeat" else words.get(call["decision"], call["decision"])

    return ", ".join(f"{call['name']} {word(call)}" for call in review["calls"])


def from_stream(payload: Mapping[str, Any]) -> StateSnapshot:
    """The checkpoint a ``stream_mode="checkpoints"`` event announces, as the snapshot ``describe`` reads."""
    config = cast(RunnableConfig, payload["config"])
    return StateSnapshot(
        values=payload.get("values") or {},
        next=tuple(payload.get("next") or ()),
        config=config,
        metadata=payload.get("metadata"),
        created_at=checkpoint_time(config["configurable"]["checkpoint_id"]),
        parent_config=cast(RunnableConfig | None, payload.get("parent_config")),
        tasks=(),
        interrupts=(),
    )


def checkpoint_time(checkpoint_id: str) -> str:
    """When a checkpoint was taken, ISO 8601 UTC, read from its id (LangGraph's ids are time-based UUIDv6, made
    with the checkpoint's own timestamp); now, for an id of another kind."""
    try:
        value = uuid.UUID(checkpoint_id)
    except ValueError:
        value = None
    if value is not None and value.version == 6:
        ticks = ((value.int >> 96) << 28) | (((value.int >> 80) & 0xFFFF) << 12) | ((value.int >> 64) & 0x0FFF)
        seconds = (ticks - _UUID_EPOCH_OFFSET) / 10_000_000
    else:
        seconds = time.time()
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def waiting(info: CheckpointInfo) -> CheckpointInfo:
    """The line of an approval point once its review asked."""
    return replace(info, stage=WAITING)


def is_approval_point(info: CheckpointInfo) -> bool:
    """Where the graph reviews proposed calls: what a rewind replays from, and what a thread keeps of old turns."""
    return info.next == ("review",)


class HistoryIndex:
    """The history lines of each thread (``{p}history:{thread}``), kept ``ttl_s`` after the last write."""

    def __init__(self, redis: Redis, keys: Keys = Keys(), *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def read(self, thread_id: str, checkpoint_ids: Sequence[str]) -> dict[str, CheckpointInfo]:
        if not checkpoint_ids:
            return {}
        raws = cast(list[str | None], await self._redis.hmget(self._keys.history(thread_id), list(checkpoint_ids)))
        return {cid: _info_from_json(raw) for cid, raw in zip(checkpoint_ids, raws, strict=True) if raw}

    async def write(
        self, thread_id: str, infos: Iterable[CheckpointInfo], *, read_all: bool = False
    ) -> dict[str, CheckpointInfo]:
        """Store ``infos``; with ``read_all``, in the same round trip, return every line the thread has."""
        mapping = {info.checkpoint_id: json.dumps(asdict(info)) for info in infos}
        key = self._keys.history(thread_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if mapping:
                pipe.hset(key, mapping=cast(Any, mapping))
                pipe.expire(key, self._ttl_s)
            if read_all:
                pipe.hgetall(key)
            results = await pipe.execute()
        if not read_all:
            return {}
        return {cid: _info_from_json(raw) for cid, raw in cast(dict[str, str], results[-1]).items()}

    async def forget(self, thread_id: str, checkpoint_ids: Sequence[str]) -> None:
        if checkpoint_ids:
            await self._redis.hdel(self._keys.history(thread_id), *checkpoint_ids)


def _info_from_json(raw: str) -> CheckpointInfo:
    data = json.loads(raw)
    return CheckpointInfo(**{**data, "next": tuple(data["next"]), "decided_by": tuple(data.get("decided_by") or ())})
