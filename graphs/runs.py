"""A run of a thread: start a task, stream its progress, pause for review, resume, rewind, cancel.

This is the one seam between the agent graph and any chat surface. It knows nothing of Slack: callers
pass a ``thread_id`` and an ``on_event`` callback and get ``RunEvent``s back. Every operation that
moves a thread forward holds the thread's Redis lock and re-reads the checkpoint inside it, so two
processes answering the same review at once cannot both run it. A process that cannot keep that lock
(Redis unreachable, or the lock gone) stops the run before the lock can pass to anyone else and raises
LockLost; the run stays marked running, and any replica's sweeper carries it on from its last checkpoint.

Beside the checkpoints, each run has an entry in the run index (graphs.run_index: its task, status, the
review it waits for) for fast listings; what a checkpoint says in words comes from graphs.history, which keeps
those lines per thread as the graph streams them, so a history is read without loading any checkpoint.

What a thread keeps: every approval point (a checkpoint where review asks or would ask, what a rewind replays from),
and every checkpoint of its latest task; the other checkpoints of older tasks are deleted once a new task has
run (``_record``). With graphs.checkpoints storing each message once, a thread grows linearly with its turns.

A run that fails, for whatever reason, ends marked failed with its turn closed (the results of calls that ran
kept, the calls it left unanswered answered as of unknown outcome), so a follow-up task starts on a well-formed
conversation; where even that cannot be written (Redis unreachable), the run stays listed as running, its lock
free, and a sweeper's ``recover`` carries it on or settles it from its checkpoint. A run whose caller is cancelled
(a shutdown) is left the same way, on purpose: it is carried on, not failed.
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
from langgraph.constants import END
from langgraph.errors import GraphRecursionError
from langgraph.types import Command, Interrupt, StateSnapshot, StreamMode
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .agent import AgentGraph, call_id, message_text, proposed_outcomes
from .checkpoints import CompactRedisSaver
from .errors import (
    EmptyTask,
    LockLost,
    ModelProblem,
    NotPending,
    RunPaused,
    UnknownCheckpoint,
    UnknownRun,
)
from .history import (
    HistoryIndex,
    checkpoint_time,
    close_open_calls,
    describe,
    from_stream,
    is_approval_point,
    waiting,
)
from .keys import DEFAULT_PREFIX, DEFAULT_TTL_S, Keys
from .locks import ThreadLocks
from .policy import Policy
from .review import check_edited_call, check_response
from .run_index import RedisRunIndex, RunIndex
from .textcalls import is_text_call
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
# "checkpoints": each checkpoint the graph passes, with its values and what runs next, for its history line and
# for where the run stopped, without reading it back.
STREAM_MODES: list[StreamMode] = ["messages", "updates", "custom", "checkpoints"]
CANCEL_POLL_S = 0.25
# What a call left unanswered by a failed run says: it may have run (the failure can come after the tool, before its
# result was saved), so nobody is told it did not.
_FAILED_UNANSWERED = (
    "the run failed before this call's result was saved, so it may or may not have run; check its effect before "
    "asking for it again"
)
# A history read describing more unknown checkpoints than this reads the thread's whole history once instead.
_DESCRIBE_ONE_BY_ONE = 3


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
        self._history = HistoryIndex(redis, keys, ttl_s=ttl_s)
        # The saver this module can prune and list cheaply; with any other, history is read from the checkpoints.
        saver = graph.checkpointer
        self._saver = saver if isinstance(saver, CompactRedisSaver) else None
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
            run = {"task": task, "requester": requester or ""}
            await self._index.open_turn(thread_id, time.time(), **run, status="running", error="")
            update = {"messages": [HumanMessage(task)], "outcome": "", "report": "", "stop": ""}
            # The cancel flag was just cleared: the watcher's first look can wait a poll.
            return await self._drive(
                thread_id,
                update,
                self._config(thread_id),
                on_event,
                run=run,
                new_turn=True,
                watch_after_s=CANCEL_POLL_S,
            )

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
            pending, run = await self._pending_and_run(thread_id)
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
            # Marked running as the review leaves the pending index (one atomic write), so if this process stops
            # right here the sweeper still finds the thread (recover() puts a review never answered back as pending).
            await self._index.take(thread_id, time.time(), status="running")
            await _safe_emit(on_event)(ReviewDecided(thread_id, interrupt_id, pending.request, checked, decided_by))
            command: Command[str] = Command(resume={interrupt_id: answer})
            return await self._drive(thread_id, command, self._config(thread_id), on_event, run=run, resumes=True)

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
            await self._index.take(
                thread_id,
                time.time(),
                clear_cancel=True,
                status="running",
                rewound_by=by or "",
                rewound_to=target.checkpoint_id,
            )
            return await self._drive(thread_id, None, self._config(thread_id, target.checkpoint_id), on_event)

    async def rewind_target(self, thread_id: str, checkpoint_id: str | None = None) -> CheckpointInfo:
        """The checkpoint a rewind would replay from: ``checkpoint_id`` (or a unique suffix of it), else the
        last approval point; one taken after a review was answered maps to the approval point before it.
        Reads the thread's history lines (graphs.history), not its checkpoints."""
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
                cancelled_by=by or "",
            )
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

    async def _end(
        self, thread_id: str, outcome: str, report: str, unanswered: str, *, detail: str = "", **fields: str
    ) -> None:
        """Close the thread's current turn without running anything more (holding its lock): its open calls answered
        as ``unanswered``, its outcome and report set; in the run index, ended with status ``outcome``."""
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if not snapshot.next and snapshot.tasks:
            # Its last step's tasks finished (their writes are saved) but the step's checkpoint was never written (the
            # run failed right then): take their results in first, so what ran is not lost or said not to have run.
            await self._note(thread_id, await self.graph.aupdate_state(self._config(thread_id), None, as_node=END))
            snapshot = await self.graph.aget_state(self._config(thread_id))
        if snapshot.next:
            values = {"messages": close_open_calls(snapshot, unanswered), "outcome": outcome, "report": report}
            if detail:
                values["detail"] = detail
            config = await self.graph.aupdate_state(self._config(thread_id), values, as_node="report")
            await self._note(thread_id, config)
        await self._index.close(thread_id, status=outcome, **fields)

    async def orphans(self) -> list[str]:
        """Runs marked as running whose lock nobody holds: the process driving them stopped mid-way."""
        running = await self._index.running()
        held = await self.locks.held(running)
        return [thread_id for thread_id in running if thread_id not in held]

    async def recover(self, thread_id: str, *, on_event: OnEvent | None = None) -> RunResult | None:
        """Carry on an orphaned run from its last checkpoint. Tool calls that had started are not run again
        (the execution ledger reports them as of unknown outcome). None if there was nothing to carry on."""
        async with self.locks.hold(thread_id):
            snapshot = await self.graph.aget_state(self._config(thread_id))
            by = await self._index.cancel_request(thread_id)
            if by is not None and not snapshot.interrupts:
                # Whoever asked may have stopped waiting for the lock: end it here (their own end is then a no-op).
                who = f"Cancelled by {by}" if by else "Cancelled"
                await self._end(thread_id, "cancelled", who, "the run was cancelled before this call ran")
                return None
            if snapshot.interrupts or not (snapshot.next or snapshot.tasks):
                # It paused, or ended, before its process could say so: say it now, so the card gets posted (or the
                # run shows its end instead of staying "running"). (Finished tasks whose step's checkpoint was never
                # written leave no next but tasks: those are carried on below, from their saved results.)
                await self._settle_from_checkpoint(thread_id, _safe_emit(on_event), None)
                return None
            nxt = ", ".join(snapshot.next) or "the results of " + ", ".join(t.name for t in snapshot.tasks)
            log.warning("recovering run %s from its last checkpoint (next: %s)", thread_id, nxt)
            await self._index.take(thread_id, time.time(), status="running", recovered_at=time.time())
            return await self._drive(thread_id, None, self._config(thread_id), on_event, resumes=True)

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

    async def history(self, thread_id: str, *, limit: int | None = None) -> list[CheckpointInfo]:
        """The thread's checkpoints, newest first (the ``limit`` newest), each with a one-line summary of what
        happened there. Two round trips: the checkpoint ids, then their lines; a checkpoint without a line yet (its
        process stopped before writing it) is read and described, and its line kept."""
        if self._saver is None:
            return [describe(s) for s in await self._snapshots(thread_id, limit=limit)]
        ids = await self._saver.alist_ids(thread_id, limit=limit)
        infos = await self._history.read(thread_id, ids)
        missing = [cid for cid in ids if cid not in infos]
        if missing:
            found = await self._describe(thread_id, missing)
            infos.update(found)
            await self._history.write(thread_id, found.values())
        return [infos[cid] for cid in ids if cid in infos]

    # --- internals ----------------------------------------------------------------------------

    async def _drive(
        self,
        thread_id: str,
        graph_input: Any,
        config: RunnableConfig,
        on_event: OnEvent | None,
        *,
        run: dict[str, str] | None = None,
        new_turn: bool = False,
        resumes: bool = False,
        watch_after_s: float = 0.0,
    ) -> RunResult:
        """Run the graph from ``config`` until it pauses or ends, and record where it stopped. The caller has marked
        the thread running (graphs.run_index) and holds its lock; ``run``: its task and requester, if read already;
        ``new_turn``: the graph starts a new task (older turns are pruned after it); ``resumes``: the graph carries
        on from the checkpoint it loads (a resume, a recovery), which it does not create."""
        # Marked as running until it stops here; if this process dies (or shuts down) first, the mark
        # outlives the thread's lock and recover() picks the run up from its last checkpoint.
        # So does a run this process stopped because it lost the thread's lock: it is neither failed nor
        # cancelled, and stays marked running for whichever replica's sweeper gets the lock next.
        emit = _safe_emit(on_event)
        drive = _Drive(loads_first=resumes)
        try:
            result = await self._drive_once(thread_id, graph_input, config, emit, drive, watch_after_s)
            if result is None:  # it paused or ended where it should
                result = await self._settle(thread_id, emit, drive, run)
        except asyncio.CancelledError:
            reason = self.locks.stop_reason()
            if reason is not None:
                _log_lock_lost(thread_id, reason)
            raise
        except LockLost as exc:
            _log_lock_lost(thread_id, str(exc))
            raise
        await self._record(thread_id, drive, new_turn=new_turn)
        return result

    async def _drive_once(
        self,
        thread_id: str,
        graph_input: Any,
        config: RunnableConfig,
        emit: OnEvent,
        drive: _Drive,
        watch_after_s: float,
    ) -> RunResult | None:
        """Stream the graph; the result of a run that stopped otherwise than by pausing or ending (cancelled,
        stopped at the recursion limit, failed), else None."""
        stream = asyncio.create_task(self._stream(thread_id, graph_input, config, emit, drive))
        self._active[thread_id] = stream
        watcher = asyncio.create_task(self._watch_cancel(thread_id, stream, watch_after_s))
        try:
            await self._graph_done(stream)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # We ourselves are being cancelled, not just the run: shutting down, or stopped by our
                # lock's keeper because the thread's lock was lost (hold() raises LockLost). Not a user cancel.
                raise
            by = await self._index.cancel_request(thread_id)
            await self._index.clear_running(thread_id)  # whoever cancelled it ends it (cancel() holds on for the lock)
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
            await self._end(thread_id, "stopped", detail, "the run was stopped before this call ran", error=detail)
            await emit(Finished(thread_id, "", "stopped", detail))
            return RunResult(thread_id, "stopped", error=detail)
        except Exception as exc:  # noqa: BLE001 - a failed run is reported (_fail logs it), not raised
            return await self._fail(thread_id, exc, emit)
        finally:
            watcher.cancel()
            self._active.pop(thread_id, None)
        return None

    async def _fail(self, thread_id: str, exc: Exception, emit: OnEvent) -> RunResult:
        """The run failed: marked failed with its turn closed (best effort: if Redis cannot be reached for that, the
        run stays listed as running and a sweeper's recover() settles it later)."""
        if isinstance(exc, ModelProblem):  # not a bug: the message says what to fix
            log.warning("run of thread %s failed: %s", thread_id, self._redact(str(exc)))
            error = self._redact(str(exc))
        else:
            log.error("run of thread %s failed", thread_id, exc_info=exc)
            error = self._redact(f"{exc.__class__.__name__}: {exc}")
        try:
            await self._end(thread_id, "failed", "", _FAILED_UNANSWERED, detail=error[:2000], error=error[:2000])
        except Exception as end_exc:  # noqa: BLE001 - the turn stays open; the index at least says failed
            log.warning(
                "could not close the turn of failed run %s (%s: %s)", thread_id, type(end_exc).__name__, end_exc
            )
            await self._index.close(thread_id, status="failed", error=error[:2000])
        await emit(Failed(thread_id, error))
        return RunResult(thread_id, "failed", error=error)

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

    async def _stream(
        self, thread_id: str, graph_input: Any, config: RunnableConfig, emit: OnEvent, drive: _Drive
    ) -> None:
        # durability="sync": the checkpoint (with its pending interrupt) is in Redis before we report a pause.
        # With the default "async", a checkpoint write can race its pending writes and leave a checkpoint that shows
        # no interrupt, so a resume by interrupt id would silently ask again under a new id.
        async for mode, chunk in self.graph.astream(graph_input, config, stream_mode=STREAM_MODES, durability="sync"):
            if mode == "checkpoints":
                drive.passed(from_stream(cast(dict[str, Any], chunk)))
                continue
            if mode == "updates" and isinstance(chunk, dict) and chunk.get("__interrupt__"):
                drive.paused(chunk["__interrupt__"])
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
                repeats = chunk["planner"].get("repeats") or {}
                calls = [
                    {**call, "mode": "repeat", "why": "already ran in this task; not run again"}
                    if call_id(call) in repeats
                    else {**call, "mode": outcomes[call_id(call)][0], "why": outcomes[call_id(call)][1]}
                    for call in ai.tool_calls
                ]
                # Calls read from the model's text: what streamed was their JSON; the model's words are the rest.
                said = message_text(ai) if any(is_text_call(call_id(c)) for c in ai.tool_calls) else None
                return [ToolProposed(thread_id, calls, said)]
        return []

    async def _watch_cancel(self, thread_id: str, stream: asyncio.Task[Any], first_after_s: float = 0.0) -> None:
        """Cancel requests may come from another process: poll the flag while this process runs the thread."""
        if first_after_s:
            await asyncio.sleep(first_after_s)
        while not stream.done():
            if await self._index.cancel_request(thread_id) is not None:
                stream.cancel()
                return
            await asyncio.sleep(CANCEL_POLL_S)

    async def _settle(self, thread_id: str, emit: OnEvent, drive: _Drive, run: dict[str, str] | None) -> RunResult:
        """Record where the run stopped (waiting, done) and say so, from what the graph streamed: the checkpoint it
        paused at or ended with is in Redis already (durability="sync"), so it is not read back."""
        if drive.interrupt is not None and drive.paused_at is not None:
            run = run if run is not None else await self._index.read(thread_id)
            return await self._pause(
                thread_id, emit, drive.interrupt, run, _timestamp(checkpoint_time(drive.paused_at))
            )
        if drive.last is not None and not drive.last.next:
            return await self._finish(thread_id, emit, drive.last.values)
        return await self._settle_from_checkpoint(thread_id, emit, run)  # streamed too little to tell: read it

    async def _settle_from_checkpoint(self, thread_id: str, emit: OnEvent, run: dict[str, str] | None) -> RunResult:
        snapshot = await self.graph.aget_state(self._config(thread_id))
        if snapshot.interrupts:
            run = run if run is not None else await self._index.read(thread_id)
            return await self._pause(thread_id, emit, snapshot.interrupts[0], run, _timestamp(snapshot.created_at))
        return await self._finish(thread_id, emit, snapshot.values)

    async def _pause(
        self, thread_id: str, emit: OnEvent, interrupt: Interrupt, run: dict[str, str], created_at: float
    ) -> RunResult:
        pending = PendingReview(
            thread_id=thread_id,
            interrupt_id=interrupt.id,
            request=interrupt.value,
            task=run.get("task", ""),
            requester=run.get("requester") or None,
            created_at=created_at,
        )
        await self._index.pause(pending)
        await emit(ReviewRequested(thread_id, pending.interrupt_id, pending.request))
        return RunResult(thread_id, "waiting", pending=pending)

    async def _finish(self, thread_id: str, emit: OnEvent, values: dict[str, Any]) -> RunResult:
        report = values.get("report", "")
        raw = values.get("outcome")
        outcome = cast(Outcome, raw) if raw in get_args(Outcome) else "done"
        detail = values.get("detail", "")
        await self._index.close(thread_id, status=outcome, report=report[:4000], error=detail[:2000])
        await emit(Finished(thread_id, report, outcome, detail))
        return RunResult(thread_id, outcome, report=report, error=detail)

    async def _pending_from_checkpoint(self, thread_id: str) -> PendingReview | None:
        """The review the thread's checkpoint waits for (the source of truth), with its task and requester."""
        return (await self._pending_and_run(thread_id))[0]

    async def _pending_and_run(self, thread_id: str) -> tuple[PendingReview | None, dict[str, str]]:
        """The review the thread's checkpoint waits for, and the run index's entry (read at the same time)."""
        snapshot, run = await asyncio.gather(
            self.graph.aget_state(self._config(thread_id)), self._index.read(thread_id)
        )
        if not snapshot.interrupts:
            return None, run
        interrupt = snapshot.interrupts[0]
        return (
            PendingReview(
                thread_id=thread_id,
                interrupt_id=interrupt.id,
                request=interrupt.value,
                task=run.get("task", ""),
                requester=run.get("requester") or None,
                created_at=_timestamp(snapshot.created_at),
            ),
            run,
        )

    # --- history lines and pruning ------------------------------------------------------------

    async def _record(self, thread_id: str, drive: _Drive, *, new_turn: bool) -> None:
        """Keep the history lines of the checkpoints the drive created; after a new task, delete the checkpoints of
        older turns that are not approval points. Best effort: a line not written is described again when a history
        is read, a checkpoint not pruned is pruned after the next task."""
        infos = drive.infos()
        try:
            if not new_turn or self._saver is None or drive.input_id is None:
                if infos:
                    await self._history.write(thread_id, infos)
                return
            known, ids = await asyncio.gather(
                self._history.write(thread_id, infos, read_all=True), self._saver.alist_ids(thread_id)
            )
            unknown = [cid for cid in ids if cid not in known]
            if unknown:  # a process stopped before writing their lines
                found = await self._describe(thread_id, unknown)
                await self._history.write(thread_id, found.values())
                known.update(found)
            turn = drive.input_id
            doomed = [cid for cid in ids if cid < turn and cid in known and not is_approval_point(known[cid])]
            present = set(ids)
            gone = [cid for cid in known if cid not in present]  # expired, or deleted elsewhere
            if doomed:
                await self._saver.adelete_checkpoints(thread_id, doomed)
            await self._history.forget(thread_id, doomed + gone)
        except Exception as exc:  # noqa: BLE001 - the run itself is settled; this is housekeeping
            log.warning("could not record the history of run %s (%s: %s)", thread_id, type(exc).__name__, exc)

    async def _note(self, thread_id: str, config: RunnableConfig) -> None:
        """Keep the history line of a checkpoint written outside the graph's stream (``aupdate_state``)."""
        checkpoint_id = config["configurable"].get("checkpoint_id")
        if not checkpoint_id:
            return
        try:
            found = await self._describe(thread_id, [checkpoint_id])
            await self._history.write(thread_id, found.values())
        except Exception as exc:  # noqa: BLE001 - housekeeping: a history read describes it again
            log.warning("could not record a history line of run %s (%s: %s)", thread_id, type(exc).__name__, exc)

    async def _describe(self, thread_id: str, checkpoint_ids: list[str]) -> dict[str, CheckpointInfo]:
        """History lines of checkpoints read from the saver: one by one, or the whole history if there are many."""
        if len(checkpoint_ids) > _DESCRIBE_ONE_BY_ONE:
            wanted = set(checkpoint_ids)
            snapshots = [s for s in await self._snapshots(thread_id) if _checkpoint_id(s) in wanted]
        else:
            snapshots = []
            for checkpoint_id in checkpoint_ids:
                snapshots += await self._snapshots(thread_id, checkpoint_id=checkpoint_id, limit=1)
        return {_checkpoint_id(s): describe(s) for s in snapshots}

    async def _snapshots(
        self, thread_id: str, *, checkpoint_id: str | None = None, limit: int | None = None
    ) -> list[StateSnapshot]:
        """Root checkpoints of the thread as history snapshots, newest first (one of them with ``checkpoint_id``)."""
        return [
            s
            async for s in self.graph.aget_state_history(self._config(thread_id, checkpoint_id), limit=limit)
            if s.config["configurable"].get("checkpoint_ns", "") == ""
        ]


class _Drive:
    """What one run of the graph streamed: the checkpoints it passed, and the review it paused for."""

    def __init__(self, *, loads_first: bool) -> None:
        self.checkpoints: dict[str, StateSnapshot] = {}  # by id, as streamed
        self.last: StateSnapshot | None = None  # where the graph stands
        self.interrupt: Interrupt | None = None
        self.paused_at: str | None = None  # the checkpoint whose review asked
        self.input_id: str | None = None  # the checkpoint of a new task's input
        self._loaded: str | None = None  # the checkpoint the graph carried on from (not created by this drive)
        self._loads_first = loads_first

    def passed(self, snapshot: StateSnapshot) -> None:
        checkpoint_id = _checkpoint_id(snapshot)
        if self._loads_first and self.last is None:
            self._loaded = checkpoint_id
        self.checkpoints[checkpoint_id] = snapshot
        self.last = snapshot
        if self.input_id is None and (snapshot.metadata or {}).get("source") == "input":
            self.input_id = checkpoint_id

    def paused(self, interrupts: Any) -> None:
        if self.last is not None and interrupts:
            self.interrupt = interrupts[0]
            self.paused_at = _checkpoint_id(self.last)

    def infos(self) -> list[CheckpointInfo]:
        """History lines of the checkpoints this drive created (and of the one it paused at)."""
        infos = []
        for checkpoint_id, snapshot in self.checkpoints.items():
            if checkpoint_id == self._loaded and checkpoint_id != self.paused_at:
                continue  # its line was written when it was created, with whatever review it asked
            info = describe(snapshot)
            infos.append(waiting(info) if checkpoint_id == self.paused_at and is_approval_point(info) else info)
        return infos


def _checkpoint_id(snapshot: StateSnapshot) -> str:
    return cast(str, snapshot.config["configurable"]["checkpoint_id"])


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
