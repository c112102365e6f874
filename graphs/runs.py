"""A run of a thread: start a task, stream its progress, pause for review, resume, rewind, cancel.

This is the one seam between the agent graph and any chat surface. It knows nothing of Slack: callers
pass a ``thread_id`` and an ``on_event`` callback and get ``RunEvent``s back. Every operation that
moves a thread forward holds the thread's Redis lock and re-reads the checkpoint inside it, so two
processes answering the same review at once cannot both run it. A process that cannot keep that lock
(Redis unreachable, or the lock gone) stops the run before the lock can pass to anyone else and raises
LockLost; the run stays marked running, and any replica's sweeper carries it on from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot
from redis.asyncio import Redis

from .agent import ASSESS_TIMEOUT_S, last_ai_message, message_text, proposed_outcomes
from .errors import (
    ChatOpsError,
    InvalidArguments,
    LockLost,
    NotPending,
    RunPaused,
    UnknownCheckpoint,
    UnknownRun,
)
from .locks import ThreadLocks
from .policy import Policy
from .review import check_response
from .tools import ToolRegistry, summarize_args
from .types import (
    Assessment,
    Cancelled,
    CheckpointInfo,
    Decision,
    Failed,
    Finished,
    PendingReview,
    ReviewDecided,
    ReviewRequested,
    RunEvent,
    RunResult,
    Token,
    ToolFinished,
    ToolProposed,
    ToolStarted,
)

log = logging.getLogger(__name__)

OnEvent = Callable[[RunEvent], Awaitable[None]]
STREAM_MODES = ["messages", "updates", "custom"]
CANCEL_POLL_S = 0.25


class Runs:
    def __init__(
        self,
        graph: CompiledStateGraph,
        registry: ToolRegistry,
        policy: Policy,
        redis: Redis,
        *,
        prefix: str = "chatops:",
        ttl_s: int = 7 * 24 * 3600,
        recursion_limit: int = 60,
        lock_ttl_ms: int = 15_000,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.graph = graph
        self.registry = registry
        self.policy = policy
        self.redis = redis
        self.locks = ThreadLocks(redis, prefix=f"{prefix}lock:", ttl_ms=lock_ttl_ms)
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._recursion_limit = recursion_limit
        self._active: dict[str, asyncio.Task[Any]] = {}
        self._abandoned: set[asyncio.Task[Any]] = set()  # graphs stopped for a lost lock, still flushing writes
        self._redact = redact or (lambda text: text)  # a run's error may quote a secret (a model server's answer)

    # --- keys -------------------------------------------------------------------------------

    def _run_key(self, thread_id: str) -> str:
        return f"{self._prefix}run:{thread_id}"

    def _cancel_key(self, thread_id: str) -> str:
        return f"{self._prefix}cancel:{thread_id}"

    @property
    def _pending_index(self) -> str:
        return f"{self._prefix}pending"

    @property
    def _running_index(self) -> str:
        return f"{self._prefix}running"

    def _config(self, thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        configurable = {"thread_id": thread_id}
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        return {"configurable": configurable, "recursion_limit": self._recursion_limit}

    # --- moving a thread forward -------------------------------------------------------------

    async def start(
        self, thread_id: str, task: str, *, requester: str | None = None, on_event: OnEvent | None = None
    ) -> RunResult:
        """Start a task on a thread (or a follow-up task on a finished one) and run until done or review."""
        if not task.strip():
            raise ChatOpsError("the task is empty: say what you want done")
        async with self.locks.hold(thread_id):
            snapshot = await self.graph.aget_state(self._config(thread_id))
            if snapshot.interrupts:
                raise RunPaused(f"thread {thread_id} is waiting for a review; decide or cancel it first")
            now = time.time()
            await self.redis.hsetnx(self._run_key(thread_id), "created_at", now)
            await self._set_run(thread_id, task=task, requester=requester or "", status="running", error="")
            await self.redis.delete(self._cancel_key(thread_id))
            update = {"messages": [HumanMessage(task)], "outcome": "", "report": ""}
            return await self._drive(thread_id, update, self._config(thread_id), on_event)

    async def resume(
        self,
        thread_id: str,
        interrupt_id: str,
        decisions: list[Decision],
        *,
        decided_by: str | None = None,
        on_event: OnEvent | None = None,
        wait_s: float = 0.0,
    ) -> RunResult:
        """Answer the pending review ``interrupt_id`` with one decision per proposed call, in order.

        Raises NotPending if that review is no longer the pending one (already decided, rewound,
        cancelled), InvalidDecision/InvalidArguments for a bad answer (nothing runs, the review stays),
        RunBusy if another process holds the thread for longer than ``wait_s``. Waiting a little lets a
        lock left by a crashed process expire, and turns a concurrent second answer into NotPending.
        """
        async with self.locks.hold(thread_id, wait_s=wait_s):
            pending = await self._pending_from_checkpoint(thread_id)
            if pending is None or pending.interrupt_id != interrupt_id:
                raise NotPending(f"that review of thread {thread_id} is no longer pending (already decided or replaced)")
            checked = check_response(pending.request, {"decisions": decisions}, self.registry)
            for decision in checked:
                if decision["type"] == "edit":
                    await self.check_edit(decision["edited_action"]["name"], decision["edited_action"]["args"])
            answer: dict[str, Any] = {"decisions": checked}
            if decided_by:
                answer["decided_by"] = decided_by
            # Marked running before the review leaves the pending index, so if this process stops right here the
            # sweeper still finds the thread (recover() puts a review that was never answered back as pending).
            await self.redis.zadd(self._running_index, {thread_id: time.time()})
            await self._clear_pending(thread_id)
            await self._set_run(thread_id, status="running")
            await _safe_emit(on_event)(ReviewDecided(thread_id, interrupt_id, pending.request, checked, decided_by))
            command = Command(resume={interrupt_id: answer})
            return await self._drive(thread_id, command, self._config(thread_id), on_event)

    async def check_edit(self, name: str, args: Any) -> dict[str, Any]:
        """Edited arguments as the tool will get them: checked against its schema, then by the tool's own check
        (where a URL or a channel really points); an edit the check refuses raises InvalidArguments."""
        checked = self.registry.validate_args(name, args)
        assess = self.registry.get(name).assess
        if assess is not None:
            try:
                found = await asyncio.wait_for(assess(checked), ASSESS_TIMEOUT_S)
            except asyncio.TimeoutError:
                found = Assessment("deny", reason="it could not be checked in time")
            if found.mode == "deny":
                field = found.field if found.field in checked else next(iter(checked), "args")
                raise InvalidArguments(name, {field: found.reason})
        return checked

    async def rewind(
        self,
        thread_id: str,
        checkpoint_id: str | None = None,
        *,
        by: str | None = None,
        on_event: OnEvent | None = None,
    ) -> RunResult:
        """Fork the thread from a checkpoint (default: its last approval point) and run on from there.

        A checkpoint taken after a review was answered is mapped to the one before it, so anything
        with side effects is asked for again rather than replayed with the old decision.
        """
        async with self.locks.hold(thread_id):
            target = await self.rewind_target(thread_id, checkpoint_id)
            await self._clear_pending(thread_id)
            await self.redis.delete(self._cancel_key(thread_id))
            await self._set_run(thread_id, status="running", rewound_by=by or "", rewound_to=target.checkpoint_id)
            return await self._drive(thread_id, None, self._config(thread_id, target.checkpoint_id), on_event)

    async def rewind_target(self, thread_id: str, checkpoint_id: str | None = None) -> CheckpointInfo:
        """The checkpoint a rewind would replay from: ``checkpoint_id`` (or a unique suffix of it), else the
        last approval point; one taken after a review was answered maps to the approval point before it."""
        history = await self.history(thread_id)
        if not history:
            raise UnknownRun(f"no run with id {thread_id}")
        by_id = {c.checkpoint_id: c for c in history}
        if checkpoint_id is None:
            target = next((c for c in history if c.next == ("review",)), None)
            if target is None:
                raise UnknownCheckpoint(f"run {thread_id} never reached an approval point; name a checkpoint")
        else:
            matches = [c for c in history if c.checkpoint_id.endswith(checkpoint_id)] if len(checkpoint_id) >= 4 else []
            if len(matches) != 1:
                raise UnknownCheckpoint(f"run {thread_id} has no checkpoint {checkpoint_id!r} (see its history)")
            target = matches[0]
        if target.next == ("execute",) and target.parent_id in by_id:
            target = by_id[target.parent_id]
        if not target.next:
            raise UnknownCheckpoint(f"checkpoint {target.checkpoint_id[-8:]} is the end of a run: nothing to replay")
        return target

    async def cancel(self, thread_id: str, *, by: str | None = None, wait_s: float = 15.0) -> RunResult:
        """Stop a running or paused run. A running one, here or in another process, stops at once."""
        if not await self.redis.exists(self._run_key(thread_id)):
            raise UnknownRun(f"no run with id {thread_id}")
        await self.redis.set(self._cancel_key(thread_id), by or "-", ex=max(60, int(wait_s) * 2))
        task = self._active.get(thread_id)
        if task is not None:
            task.cancel()
        async with self.locks.hold(thread_id, wait_s=wait_s):
            await self._end(thread_id, "cancelled", f"Cancelled by {by}" if by else "Cancelled",
                            "the run was cancelled before this call ran")
            await self._set_run(thread_id, cancelled_by=by or "")
            await self.redis.delete(self._cancel_key(thread_id))
        return RunResult(thread_id, "cancelled")

    async def expire(self, thread_id: str, interrupt_id: str) -> bool:
        """End a run whose review ``interrupt_id`` waited too long. False if that review is no longer
        pending (decided meanwhile, or already expired by another replica)."""
        async with self.locks.hold(thread_id, wait_s=5.0):
            pending = await self._pending_from_checkpoint(thread_id)
            if pending is None or pending.interrupt_id != interrupt_id:
                if pending is None:
                    await self.redis.zrem(self._pending_index, thread_id)
                return False
            await self._end(thread_id, "expired", "Expired: nobody decided in time",
                            "nobody approved this call in time; it did not run")
            return True

    async def _end(self, thread_id: str, outcome: str, report: str, unanswered: str) -> None:
        """Close the thread's current turn without running anything more (holding its lock)."""
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if snapshot.next:
            await self.graph.aupdate_state(
                self._config(thread_id),
                {"messages": _close_open_calls(snapshot, unanswered), "outcome": outcome, "report": report},
                as_node="report",
            )
        await self._clear_pending(thread_id)
        await self._set_run(thread_id, status=outcome)

    async def orphans(self) -> list[str]:
        """Runs marked as running whose lock nobody holds: the process driving them stopped mid-way."""
        orphaned = []
        for thread_id in await self.redis.zrange(self._running_index, 0, -1):
            if not await self.locks.is_held(thread_id):
                orphaned.append(thread_id)
        return orphaned

    async def recover(self, thread_id: str, *, on_event: OnEvent | None = None) -> RunResult | None:
        """Carry on an orphaned run from its last checkpoint. Tool calls that had started are not run again
        (the execution ledger reports them as of unknown outcome). None if there was nothing to carry on."""
        async with self.locks.hold(thread_id):
            snapshot = await self.graph.aget_state(self._config(thread_id))
            if snapshot.interrupts or not snapshot.next or await self.redis.exists(self._cancel_key(thread_id)):
                await self.redis.zrem(self._running_index, thread_id)
                if snapshot.interrupts:
                    # It paused before its process could say so: say it now, so the card gets posted.
                    await self._settle(thread_id, _safe_emit(on_event))
                return None
            log.warning("recovering run %s from its last checkpoint (next: %s)", thread_id, ", ".join(snapshot.next))
            await self._set_run(thread_id, status="running", recovered_at=time.time())
            return await self._drive(thread_id, None, self._config(thread_id), on_event)

    # --- reading ------------------------------------------------------------------------------

    async def pending(self) -> list[PendingReview]:
        """Every review waiting for a human, oldest first, across all threads and processes."""
        thread_ids = await self.redis.zrange(self._pending_index, 0, -1)
        reviews = []
        for thread_id in thread_ids:
            raw = await self.redis.hget(self._run_key(thread_id), "pending")
            if raw:
                reviews.append(_pending_from_json(raw))
            else:  # the run expired: drop it from the index
                await self.redis.zrem(self._pending_index, thread_id)
        return reviews

    async def pending_review(self, thread_id: str) -> PendingReview | None:
        """The review a thread waits for, read from its checkpoint (the source of truth)."""
        return await self._pending_from_checkpoint(thread_id)

    async def info(self, thread_id: str) -> dict[str, str]:
        """What is known about a run: task, requester, status, times, report, error."""
        data = await self.redis.hgetall(self._run_key(thread_id))
        if not data:
            raise UnknownRun(f"no run with id {thread_id}")
        data.pop("pending", None)
        return data

    async def history(self, thread_id: str) -> list[CheckpointInfo]:
        """The thread's checkpoints, newest first, each with a one-line summary of what happened there."""
        snapshots = [
            s
            async for s in self.graph.aget_state_history(self._config(thread_id))
            if s.config["configurable"].get("checkpoint_ns", "") == ""
        ]
        return [_describe(s) for s in snapshots]

    # --- internals ----------------------------------------------------------------------------

    async def _drive(self, thread_id: str, graph_input: Any, config: dict[str, Any], on_event: OnEvent | None) -> RunResult:
        # Marked as running until it stops here; if this process dies (or shuts down) first, the mark
        # outlives the thread's lock and recover() picks the run up from its last checkpoint.
        # So does a run this process stopped because it lost the thread's lock: it is neither failed nor
        # cancelled, and stays marked running for whichever replica's sweeper gets the lock next.
        try:
            await self.redis.zadd(self._running_index, {thread_id: time.time()})
            result = await self._drive_once(thread_id, graph_input, config, on_event)
        except asyncio.CancelledError:
            reason = self.locks.stop_reason()
            if reason is not None:
                _log_lock_lost(thread_id, reason)
            raise
        except LockLost as exc:
            _log_lock_lost(thread_id, str(exc))
            raise
        await self.redis.zrem(self._running_index, thread_id)
        return result

    async def _drive_once(
        self, thread_id: str, graph_input: Any, config: dict[str, Any], on_event: OnEvent | None
    ) -> RunResult:
        emit = _safe_emit(on_event)
        stream = asyncio.create_task(self._stream(thread_id, graph_input, config, emit))
        self._active[thread_id] = stream
        watcher = asyncio.create_task(self._watch_cancel(thread_id, stream))
        try:
            await self._graph_done(stream)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # We ourselves are being cancelled, not just the run: shutting down, or stopped by our
                # lock's keeper because the thread's lock was lost (hold() raises LockLost). Not a user cancel.
                raise
            by = await self.redis.get(self._cancel_key(thread_id))
            await emit(Cancelled(thread_id, by=None if by in (None, "-") else by))
            return RunResult(thread_id, "cancelled")
        except LockLost:
            raise  # not a failure of the run: another replica carries it on (see _drive)
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not raised into the chat surface
            log.exception("run of thread %s failed", thread_id)
            error = self._redact(f"{exc.__class__.__name__}: {exc}")
            await self._set_run(thread_id, status="failed", error=error[:2000])
            await emit(Failed(thread_id, error))
            return RunResult(thread_id, "failed", error=error)
        finally:
            watcher.cancel()
            self._active.pop(thread_id, None)
        return await self._settle(thread_id, emit)

    async def _graph_done(self, stream: asyncio.Task[None]) -> None:
        """``await stream``, except when this task is stopped because it lost the thread's lock: then the graph is
        cancelled (its node stops at once) but waited for only briefly, since its last checkpoint writes may hang
        on the very Redis that cost us the lock; they finish or fail in the background, where nothing waits."""
        try:
            await asyncio.wait([stream])
        except asyncio.CancelledError:
            stream.cancel()
            if self.locks.stop_reason() is None:
                await asyncio.wait([stream])  # shutting down: let the graph save what it has
            else:
                await asyncio.wait([stream], timeout=self.locks.margin_s / 2)
                if not stream.done():
                    self._abandoned.add(stream)
                    stream.add_done_callback(self._abandoned.discard)
                    stream.add_done_callback(lambda task: task.cancelled() or task.exception())
            raise
        stream.result()

    async def _stream(self, thread_id: str, graph_input: Any, config: dict[str, Any], emit: OnEvent) -> None:
        # durability="sync": the checkpoint (with its pending interrupt) is in Redis before we report a
        # pause, which also avoids the async saver race that hides interrupts (see docs).
        async for mode, chunk in self.graph.astream(graph_input, config, stream_mode=STREAM_MODES, durability="sync"):
            for event in self._translate(thread_id, mode, chunk):
                await emit(event)

    def _translate(self, thread_id: str, mode: str, chunk: Any) -> list[RunEvent]:
        if mode == "messages":
            message, meta = chunk
            if meta.get("langgraph_node") == "planner" and isinstance(message, (AIMessageChunk, AIMessage)):
                text = message_text(message)
                return [Token(thread_id, text)] if text else []
            return []
        if mode == "custom" and isinstance(chunk, dict):
            if chunk.get("event") == "tool_started":
                return [ToolStarted(thread_id, chunk["tool_call_id"], chunk["name"], chunk["args"])]
            if chunk.get("event") == "tool_finished":
                return [
                    ToolFinished(
                        thread_id, chunk["tool_call_id"], chunk["name"], chunk["ok"], chunk["output"], chunk["duration_s"]
                    )
                ]
            return []
        if mode == "updates" and isinstance(chunk, dict) and chunk.get("planner"):
            messages = chunk["planner"].get("messages", [])
            ai = messages[-1] if messages else None
            if isinstance(ai, AIMessage) and ai.tool_calls:
                outcomes = proposed_outcomes(
                    ai.tool_calls, self.registry, self.policy, chunk["planner"].get("assessments") or {}
                )
                calls = [
                    {**call, "mode": outcomes[call["id"]][0], "why": outcomes[call["id"]][1]} for call in ai.tool_calls
                ]
                return [ToolProposed(thread_id, calls)]
        return []

    async def _watch_cancel(self, thread_id: str, stream: asyncio.Task[Any]) -> None:
        """Cancel requests may come from another process: poll the flag while this process runs the thread."""
        while not stream.done():
            if await self.redis.exists(self._cancel_key(thread_id)):
                stream.cancel()
                return
            await asyncio.sleep(CANCEL_POLL_S)

    async def _settle(self, thread_id: str, emit: OnEvent) -> RunResult:
        """Record where the run stopped (waiting, done) and say so."""
        pending = await self._pending_from_checkpoint(thread_id)
        if pending is not None:
            await self._set_run(thread_id, status="waiting", pending=json.dumps(asdict(pending)))
            await self.redis.zadd(self._pending_index, {thread_id: pending.created_at})
            await emit(ReviewRequested(thread_id, pending.interrupt_id, pending.request))
            return RunResult(thread_id, "waiting", pending=pending)
        snapshot = await self.graph.aget_state(self._config(thread_id))
        report = snapshot.values.get("report", "")
        await self._set_run(thread_id, status="done", report=report[:4000])
        await emit(Finished(thread_id, report))
        return RunResult(thread_id, "done", report=report)

    async def _pending_from_checkpoint(self, thread_id: str) -> PendingReview | None:
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if not snapshot.interrupts:
            return None
        interrupt = snapshot.interrupts[0]
        run = await self.redis.hgetall(self._run_key(thread_id))
        created = snapshot.created_at
        return PendingReview(
            thread_id=thread_id,
            interrupt_id=interrupt.id,
            request=interrupt.value,
            task=run.get("task", ""),
            requester=run.get("requester") or None,
            created_at=_timestamp(created),
        )

    async def _clear_pending(self, thread_id: str) -> None:
        await self.redis.zrem(self._pending_index, thread_id)
        await self.redis.hdel(self._run_key(thread_id), "pending")

    async def _set_run(self, thread_id: str, **fields: Any) -> None:
        key = self._run_key(thread_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={**{k: "" if v is None else v for k, v in fields.items()}, "updated_at": time.time()})
            pipe.expire(key, self._ttl_s)
            await pipe.execute()


def _log_lock_lost(thread_id: str, reason: str) -> None:
    log.warning(
        "stopped driving run %s (%s); it stays marked running, to be carried on from its last checkpoint "
        "once the lock expires", thread_id, reason,
    )


def _safe_emit(on_event: OnEvent | None) -> OnEvent:
    async def emit(event: RunEvent) -> None:
        if on_event is None:
            return
        try:
            await on_event(event)
        except Exception:  # noqa: BLE001 - a broken listener must not break the run
            log.exception("run event listener failed on %s", type(event).__name__)

    return emit


def _pending_from_json(raw: str) -> PendingReview:
    return PendingReview(**json.loads(raw))


def _timestamp(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else time.time()


def _close_open_calls(snapshot: StateSnapshot, reason: str) -> list[ToolMessage]:
    """Tool results for calls that never ran, so a later turn's model request stays well-formed."""
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


def _describe(snapshot: StateSnapshot) -> CheckpointInfo:
    values = snapshot.values or {}
    messages = values.get("messages", [])
    metadata = dict(snapshot.metadata or {})
    step = int(metadata.get("step", -1))
    nxt = tuple(snapshot.next)
    ai = last_ai_message(messages)
    results = [m for m in messages[messages.index(ai) + 1 :] if isinstance(m, ToolMessage)] if ai else []
    ran = ", ".join(f"{m.name} {'failed' if m.status == 'error' else 'ok'}" for m in results)
    last_review = values.get("reviews", [])[-1:] or [None]
    if metadata.get("source") == "input" or not messages:
        summary = "task received"
    elif nxt == ("review",) and ai is not None:
        if results:
            waiting = [c["name"] for c in ai.tool_calls if c["id"] not in {m.tool_call_id for m in results}]
            summary = f"tools finished: {ran}; still to review: {', '.join(waiting)}"
        else:
            proposed = ", ".join(f"{c['name']}({summarize_args(c['args'], 60)})" for c in ai.tool_calls)
            summary = f"model proposed: {proposed}"
        if snapshot.interrupts:
            summary += " (asked for review)"
    elif nxt == ("execute",) and last_review[0]:
        summary = "review: " + _decisions_line(last_review[0])
    elif nxt == ("planner",) and isinstance(messages[-1], HumanMessage):
        summary = f"task: {message_text(messages[-1])[:120]}"
    elif nxt == ("planner",) and last_review[0] and all(c["decision"] == "reject" for c in last_review[0]["calls"]):
        summary = "review: " + _decisions_line(last_review[0])
    elif nxt == ("planner",):
        summary = f"tools finished: {ran}" if ran else "back to the model"
    elif nxt == ("report",) and ai is not None:
        summary = f"model answered: {message_text(ai)[:120]}"
    elif not nxt:
        outcome = values.get("outcome") or "done"
        summary = f"{outcome}: {str(values.get('report', ''))[:120]}"
    else:
        summary = f"next: {', '.join(nxt)}"
    parent = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=step,
        next=nxt,
        created_at=snapshot.created_at or "",
        summary=summary,
        parent_id=parent,
        metadata={"source": metadata.get("source", "")},
    )


def _decisions_line(review: dict[str, Any]) -> str:
    parts = []
    for call in review["calls"]:
        who = f" by {review['decided_by']}" if review.get("decided_by") and call["mode"] == "ask" else ""
        parts.append(f"{call['name']} {call['decision']}{'d' if call['decision'].endswith('e') else 'ed'}{who}")
    return ", ".join(parts)
