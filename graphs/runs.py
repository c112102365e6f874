"""A run of a thread: start a task, stream its progress, pause for review, resume, rewind, cancel.

This is the one seam between the agent graph and any chat surface. It knows nothing of Slack: callers
pass a ``thread_id`` and an ``on_event`` callback and get ``RunEvent``s back. Every operation that
moves a thread forward holds the thread's Redis lock and re-reads the checkpoint inside it, so two
processes answering the same review at once cannot both run it. A process that cannot keep that lock
(Redis unreachable, or the lock gone) stops the run before the lock can pass to anyone else and raises
LockLost; the run stays marked running, and any replica's sweeper carries it on from its last checkpoint.

Beside the checkpoints, each run has an entry in the run index (graphs.run_index: its task, status, the
review it waits for) for fast listings; what a checkpoint says in words comes from graphs.history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, cast, get_args

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.types import Command, StreamMode
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .agent import AgentGraph, call_id, message_text, proposed_outcomes
from .errors import (
    EmptyTask,
    LockLost,
    NotPending,
    RunPaused,
    UnknownCheckpoint,
    UnknownRun,
)
from .history import close_open_calls, describe
from .keys import DEFAULT_PREFIX, DEFAULT_TTL_S, Keys
from .locks import ThreadLocks
from .policy import Policy
from .review import check_edited_call, check_response
from .run_index import RedisRunIndex, RunIndex
from .tools import ToolRegistry
from .types import (
    Cancelled,
    CheckpointInfo,
    Decision,
    Failed,
    Finished,
    Outcome,
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
STREAM_MODES: list[StreamMode] = ["messages", "updates", "custom"]
CANCEL_POLL_S = 0.25


class Runs:
    """The runs of one deployment: keys under ``prefix`` (graphs.keys), run entries kept ``ttl_s``, each thread
    moved under its lock (``locks``, held ``lock_ttl_ms`` at a time and extended); ``redact`` cleans run errors."""

    def __init__(
        self,
        graph: AgentGraph,
        registry: ToolRegistry,
        policy: Policy,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: int = DEFAULT_TTL_S,
        recursion_limit: int = 60,
        lock_ttl_ms: int = 15_000,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.graph = graph
        self.registry = registry
        self.policy = policy
        self.redis = redis
        keys = Keys(prefix)
        self.locks = ThreadLocks(redis, prefix=keys.lock_prefix, ttl_ms=lock_ttl_ms)
        self._index: RunIndex = RedisRunIndex(redis, keys, ttl_s=ttl_s)
        self._recursion_limit = recursion_limit
        self._active: dict[str, asyncio.Task[Any]] = {}
        self._abandoned: set[asyncio.Task[Any]] = set()  # graphs stopped for a lost lock, still flushing writes
        self._redact = redact or (lambda text: text)  # a run's error may quote a secret (a model server's answer)

    def _config(self, thread_id: str, checkpoint_id: str | None = None) -> RunnableConfig:
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
            raise EmptyTask("the task is empty: say what you want done")
        async with self.locks.hold(thread_id):
            snapshot = await self.graph.aget_state(self._config(thread_id))
            if snapshot.interrupts:
                raise RunPaused(f"thread {thread_id} is waiting for a review; decide or cancel it first")
            await self._index.begin(thread_id, time.time())
            await self._index.update(thread_id, task=task, requester=requester or "", status="running", error="")
            await self._index.clear_cancel(thread_id)
            update = {"messages": [HumanMessage(task)], "outcome": "", "report": ""}
            return await self._drive(thread_id, update, self._config(thread_id), on_event)

    async def resume(
        self,
        thread_id: str,
        interrupt_id: str,
        decisions: list[Decision],
        *,
        decided_by: str | None = None,
        end: bool = False,
        on_event: OnEvent | None = None,
        wait_s: float = 0.0,
    ) -> RunResult:
        """Answer the pending review ``interrupt_id`` with one decision per proposed call, in order.

        Raises NotPending if that review is no longer the pending one (already decided, rewound,
        cancelled), InvalidDecision/InvalidArguments for a bad answer (nothing runs, the review stays),
        RunBusy if another process holds the thread for longer than ``wait_s``. Waiting a little lets a
        lock left by a crashed process expire, and turns a concurrent second answer into NotPending.
        ``end`` with every call rejected ends the task there (outcome "rejected") instead of re-planning.
        """
        async with self.locks.hold(thread_id, wait_s=wait_s):
            pending = await self._pending_from_checkpoint(thread_id)
            if pending is None or pending.interrupt_id != interrupt_id:
                raise NotPending(
                    f"that review of thread {thread_id} is no longer pending (already decided or replaced)"
                )
            checked = check_response(pending.request, {"decisions": decisions}, self.registry)
            for decision in checked:
                if decision["type"] == "edit":  # the tool's own check too, which the graph does not run
                    await self.check_edit(decision["edited_action"]["name"], decision["edited_action"]["args"])
            answer: dict[str, Any] = {"decisions": checked}
            if decided_by:
                answer["decided_by"] = decided_by
            if end:
                answer["end"] = True
            # Marked running before the review leaves the pending index, so if this process stops right here the
            # sweeper still finds the thread (recover() puts a review that was never answered back as pending).
            await self._index.mark_running(thread_id, time.time())
            await self._index.clear_pending(thread_id)
            await self._index.update(thread_id, status="running")
            await _safe_emit(on_event)(ReviewDecided(thread_id, interrupt_id, pending.request, checked, decided_by))
            command: Command[str] = Command(resume={interrupt_id: answer})
            return await self._drive(thread_id, command, self._config(thread_id), on_event)

    async def check_edit(self, name: str, args: Any) -> dict[str, Any]:
        """Edited arguments as the tool will get them: checked against its schema, then by the tool's own check
        (where a URL or a channel really points); an edit the check refuses raises InvalidArguments. The same
        check ``resume`` makes, so an edit dialog can show the errors before anything is answered."""
        return await check_edited_call(self.registry, name, args)

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
            await self._index.clear_pending(thread_id)
            await self._index.clear_cancel(thread_id)
            await self._index.update(thread_id, status="running", rewound_by=by or "", rewound_to=target.checkpoint_id)
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
        if not await self._index.read(thread_id):
            raise UnknownRun(f"no run with id {thread_id}")
        await self._index.request_cancel(thread_id, by, ttl_s=max(60, int(wait_s) * 2))
        task = self._active.get(thread_id)
        if task is not None:
            task.cancel()
        async with self.locks.hold(thread_id, wait_s=wait_s):
            await self._end(
                thread_id,
                "cancelled",
                f"Cancelled by {by}" if by else "Cancelled",
                "the run was cancelled before this call ran",
            )
            await self._index.update(thread_id, cancelled_by=by or "")
            await self._index.clear_cancel(thread_id)
        return RunResult(thread_id, "cancelled")

    async def expire(self, thread_id: str, interrupt_id: str) -> bool:
        """End a run whose review ``interrupt_id`` waited too long. False if that review is no longer
        pending (decided meanwhile, or already expired by another replica)."""
        async with self.locks.hold(thread_id, wait_s=5.0):
            pending = await self._pending_from_checkpoint(thread_id)
            if pending is None or pending.interrupt_id != interrupt_id:
                if pending is None:
                    await self._index.clear_pending(thread_id)
                return False
            await self._end(
                thread_id,
                "expired",
                "Expired: nobody decided in time",
                "nobody approved this call in time; it did not run",
            )
            return True

    async def _end(self, thread_id: str, outcome: str, report: str, unanswered: str) -> None:
        """Close the thread's current turn without running anything more (holding its lock)."""
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if snapshot.next:
            await self.graph.aupdate_state(
                self._config(thread_id),
                {"messages": close_open_calls(snapshot, unanswered), "outcome": outcome, "report": report},
                as_node="report",
            )
        await self._index.clear_pending(thread_id)
        await self._index.update(thread_id, status=outcome)

    async def orphans(self) -> list[str]:
        """Runs marked as running whose lock nobody holds: the process driving them stopped mid-way."""
        orphaned = []
        for thread_id in await self._index.running():
            if not await self.locks.is_held(thread_id):
                orphaned.append(thread_id)
        return orphaned

    async def recover(self, thread_id: str, *, on_event: OnEvent | None = None) -> RunResult | None:
        """Carry on an orphaned run from its last checkpoint. Tool calls that had started are not run again
        (the execution ledger reports them as of unknown outcome). None if there was nothing to carry on."""
        async with self.locks.hold(thread_id):
            snapshot = await self.graph.aget_state(self._config(thread_id))
            if snapshot.interrupts or not snapshot.next or await self._index.cancel_request(thread_id) is not None:
                await self._index.clear_running(thread_id)
                if snapshot.interrupts:
                    # It paused before its process could say so: say it now, so the card gets posted.
                    await self._settle(thread_id, _safe_emit(on_event))
                return None
            log.warning("recovering run %s from its last checkpoint (next: %s)", thread_id, ", ".join(snapshot.next))
            await self._index.update(thread_id, status="running", recovered_at=time.time())
            return await self._drive(thread_id, None, self._config(thread_id), on_event)

    # --- reading ------------------------------------------------------------------------------

    async def pending(self) -> list[PendingReview]:
        """Every review waiting for a human, oldest first, across all threads and processes.

        Listed from the run index, not from the checkpoints: fast, but it may lag a checkpoint by a moment. Before
        acting on one, read the thread's own review with ``pending_review`` (the source of truth)."""
        return await self._index.pending()

    async def pending_review(self, thread_id: str) -> PendingReview | None:
        """The review a thread waits for, read from its checkpoint: the source of truth, whatever ``pending``
        lists. None if the thread waits for nothing."""
        return await self._pending_from_checkpoint(thread_id)

    async def info(self, thread_id: str) -> dict[str, str]:
        """What the run index knows about a run: task, requester, status, times, report, error, who rewound or
        cancelled it (graphs.run_index lists the fields)."""
        data = await self._index.read(thread_id)
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
        return [describe(s) for s in snapshots]

    # --- internals ----------------------------------------------------------------------------

    async def _drive(
        self, thread_id: str, graph_input: Any, config: RunnableConfig, on_event: OnEvent | None
    ) -> RunResult:
        # Marked as running until it stops here; if this process dies (or shuts down) first, the mark
        # outlives the thread's lock and recover() picks the run up from its last checkpoint.
        # So does a run this process stopped because it lost the thread's lock: it is neither failed nor
        # cancelled, and stays marked running for whichever replica's sweeper gets the lock next.
        try:
            await self._index.mark_running(thread_id, time.time())
            result = await self._drive_once(thread_id, graph_input, config, on_event)
        except asyncio.CancelledError:
            reason = self.locks.stop_reason()
            if reason is not None:
                _log_lock_lost(thread_id, reason)
            raise
        except LockLost as exc:
            _log_lock_lost(thread_id, str(exc))
            raise
        await self._index.clear_running(thread_id)
        return result

    async def _drive_once(
        self, thread_id: str, graph_input: Any, config: RunnableConfig, on_event: OnEvent | None
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
            by = await self._index.cancel_request(thread_id)
            await emit(Cancelled(thread_id, by=by or None))
            return RunResult(thread_id, "cancelled")
        except LockLost:
            raise  # not a failure of the run: another replica carries it on (see _drive)
        except GraphRecursionError:
            # A limit, not a bug: the model kept proposing work. The turn is closed so a follow-up task can start.
            detail = (
                f"stopped after {self._recursion_limit} steps: the model kept calling tools without finishing; "
                "ask again with a narrower task"
            )
            await self._end(thread_id, "stopped", detail, "the run was stopped before this call ran")
            await self._index.update(thread_id, error=detail)
            await emit(Finished(thread_id, "", "stopped", detail))
            return RunResult(thread_id, "stopped", error=detail)
        except Exception as exc:  # a failed run is reported, not raised into the chat surface
            log.exception("run of thread %s failed", thread_id)
            error = self._redact(f"{exc.__class__.__name__}: {exc}")
            await self._index.update(thread_id, status="failed", error=error[:2000])
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

    async def _stream(self, thread_id: str, graph_input: Any, config: RunnableConfig, emit: OnEvent) -> None:
        # durability="sync": the checkpoint (with its pending interrupt) is in Redis before we report a pause.
        # With the default "async", a checkpoint write can race its pending writes and leave a checkpoint that shows
        # no interrupt, so a resume by interrupt id would silently ask again under a new id.
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
                        thread_id,
                        chunk["tool_call_id"],
                        chunk["name"],
                        chunk["ok"],
                        chunk["output"],
                        chunk["duration_s"],
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
                    {**call, "mode": outcomes[call_id(call)][0], "why": outcomes[call_id(call)][1]}
                    for call in ai.tool_calls
                ]
                return [ToolProposed(thread_id, calls)]
        return []

    async def _watch_cancel(self, thread_id: str, stream: asyncio.Task[Any]) -> None:
        """Cancel requests may come from another process: poll the flag while this process runs the thread."""
        while not stream.done():
            if await self._index.cancel_request(thread_id) is not None:
                stream.cancel()
                return
            await asyncio.sleep(CANCEL_POLL_S)

    async def _settle(self, thread_id: str, emit: OnEvent) -> RunResult:
        """Record where the run stopped (waiting, done) and say so."""
        pending = await self._pending_from_checkpoint(thread_id)
        if pending is not None:
            await self._index.list_pending(pending)
            await emit(ReviewRequested(thread_id, pending.interrupt_id, pending.request))
            return RunResult(thread_id, "waiting", pending=pending)
        snapshot = await self.graph.aget_state(self._config(thread_id))
        report = snapshot.values.get("report", "")
        raw = snapshot.values.get("outcome")
        outcome = cast(Outcome, raw) if raw in get_args(Outcome) else "done"
        detail = snapshot.values.get("detail", "")
        await self._index.update(thread_id, status=outcome, report=report[:4000], error=detail[:2000])
        await emit(Finished(thread_id, report, outcome, detail))
        return RunResult(thread_id, outcome, report=report, error=detail)

    async def _pending_from_checkpoint(self, thread_id: str) -> PendingReview | None:
        """The review the thread's checkpoint waits for (the source of truth), with its task and requester."""
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if not snapshot.interrupts:
            return None
        interrupt = snapshot.interrupts[0]
        run = await self._index.read(thread_id)
        created = snapshot.created_at
        return PendingReview(
            thread_id=thread_id,
            interrupt_id=interrupt.id,
            request=interrupt.value,
            task=run.get("task", ""),
            requester=run.get("requester") or None,
            created_at=_timestamp(created),
        )


def _log_lock_lost(thread_id: str, reason: str) -> None:
    log.warning(
        "stopped driving run %s (%s); it stays marked running, to be carried on from its last checkpoint "
        "once the lock expires",
        thread_id,
        reason,
    )


def _safe_emit(on_event: OnEvent | None) -> OnEvent:
    async def emit(event: RunEvent) -> None:
        if on_event is None:
            return
        try:
            await on_event(event)
        except RedisError as exc:  # an outage, not a bug: one line, and the run goes on as far as it can
            log.error("run event listener could not reach Redis on %s (%s)", type(event).__name__, type(exc).__name__)
        except Exception:  # a broken listener must not break the run
            log.exception("run event listener failed on %s", type(event).__name__)

    return emit


def _timestamp(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else time.time()
