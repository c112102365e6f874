"""A run from the request that starts it to its end: asking, the sweeper (expiry, undelivered cards, runs
cut off by a crash), cancel and rewind.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from graphs.errors import LockLost, RunBusy, RunPaused
from graphs.runs import Runs
from graphs.types import PendingReview, ReviewRequested, RunEvent

from .audit import AuditEntry, AuditLog
from .blocks import clip, literal
from .progress import Progress
from .queue import USER_SLOT_S, Job, RunQueue
from .run_messages import RunMessages
from .slack_io import SlackIO, Where
from .store import RunRecord, SlackStore, Turn, new_run_id

log = logging.getLogger(__name__)

LEADING_MENTIONS = re.compile(r"^\s*(<@[UW][A-Z0-9]+(\|[^>]*)?>[\s,:]*)+")
DM_DEAD_END = (
    ":warning: Heads-up: approvers cannot see cards in a DM with me, and no review channel is set, so anything "
    "that needs approval will wait here until it expires (read-only checks still run). Ask in a channel where "
    "approvers are, or ask an admin to set CHATOPS_REVIEW_CHANNEL: then cards of DM requests go there."
)
EMPTY_ASK = "Tell me what to do, e.g. _check the API and run the disk-usage runbook_."


class Lifecycle:
    def __init__(
        self,
        io: SlackIO,
        store: SlackStore,
        runs: Runs,
        messages: RunMessages,
        audit: AuditLog,
        *,
        warn_dm: bool = True,
        queue: RunQueue | None = None,
    ) -> None:
        self._warn_dm = warn_dm
        self._queue = queue  # None: every request starts at once (tests of the core flow)
        self._io = io
        self._store = store
        self._runs = runs
        self._messages = messages
        self._audit = audit
        self._policy = runs.policy
        self._working: set[str] = set()  # runs this replica's sweeper is recovering or posting a card for

    # --- asking -----------------------------------------------------------------------------------

    async def ask(self, *, channel: str, user: str, text: str, message_ts: str, thread_ts: str | None) -> None:
        """Someone asked the bot for a task (mention, DM or /chatops run): answer in the thread."""
        task = LEADING_MENTIONS.sub("", text).strip()
        slack_thread = thread_ts or message_ts
        if not task:
            await self._io.post(channel, slack_thread, EMPTY_ASK)
            return
        run_id = await self._store.claim_thread(channel, slack_thread, new_run_id())
        # One thread, one run, one requester: the turn is claimed with who asked for what in one atomic step,
        # so a second mention a moment later is told what is under way instead of taking the run over.
        turn = await self._store.claim_turn(run_id, requester=user, task=task)
        if not turn.mine:
            # The turn is held from the mention until its run lets go of the thread, which is a moment after
            # its card is posted: a run that already waits for approval says so.
            paused = await self._runs.pending_review(run_id) is not None
            await self._io.post(
                channel,
                slack_thread,
                _paused(run_id)
                if paused
                else f"Run `{run_id}` in this thread is already working on "
                f"“{literal(clip(turn.task, 200))}” for <@{turn.requester}>; ask again when it is done.",
            )
            return
        started = False
        try:
            refusal = await self._busy_reason(run_id)
            if refusal:
                await self._io.post(channel, slack_thread, refusal)
                return
            if self._queue is not None:
                held = await self._queue.admit(user, run_id)
                if held is not None:
                    await self._io.post(
                        channel,
                        slack_thread,
                        f"<@{user}>, you have {held} runs queued or working, as many as one person may "
                        "(CHATOPS_MAX_RUNS_PER_USER); ask again when one of them is done or waits for approval.",
                    )
                    return
            progress = Progress(run_id, user, task)
            if self._queue is not None and (ahead := await self._queue.ahead()) is not None:
                progress.status, progress.ahead = "queued", ahead
            posted = await self._io.post(channel, slack_thread, *progress.render())
            if posted is None:
                if self._queue is not None:
                    await self._queue.release(user, run_id)
                return
            if self._warn_dm and self._messages.routing.dead_end(channel):
                await self._io.post(channel, slack_thread, DM_DEAD_END)
            await self._store.update(
                run_id,
                channel=channel,
                thread_ts=slack_thread,
                progress_ts=posted,
                requester=user,
                task=task,
                progress=progress.to_json(),
            )
            record = RunRecord(
                run_id, channel=channel, thread_ts=slack_thread, progress_ts=posted, requester=user, task=task
            )
            if self._queue is None:
                self._io.spawn(
                    self._start(record, progress, turn), f"run {run_id}", where=Where(channel, user, slack_thread)
                )
            else:
                # The turn stays claimed while the task waits, so the thread takes no other request meanwhile.
                await self._store.extend_turn(run_id, turn, USER_SLOT_S)
                await self._queue.put(Job(run_id, turn.token, user, task, time.time()))
            started = True
        finally:
            if not started:
                await self._store.release_turn(run_id, turn)
                if self._queue is not None:
                    await self._queue.release(user, run_id)

    async def ask_from_command(self, *, channel: str, user: str, task: str) -> None:
        """/chatops run: the request becomes a visible message the thread hangs off."""
        root = await self._io.post(channel, None, f"<@{user}> asked: {literal(task)}")
        if root is None:
            await self._io.tell(
                Where(channel, user), "I could not post in this channel; invite me first (`/invite @chatops`)."
            )
            return
        await self.ask(channel=channel, user=user, text=task, message_ts=root, thread_ts=None)

    async def _busy_reason(self, run_id: str) -> str | None:
        if await self._runs.pending_review(run_id) is not None:
            return _paused(run_id)
        if await self._runs.locks.is_held(run_id):
            return f"Run `{run_id}` in this thread is still working; ask again when it is done."
        return None

    async def run_queued(self, job: Job) -> None:
        """A queued task's turn came: start its run (a worker of the queue calls this)."""
        record = await self._store.run(job.run_id)
        turn = Turn(job.requester, job.task, job.token, mine=True)
        try:
            if record is None or not record.progress_ts:
                await self._store.release_turn(job.run_id, turn)
                return
            progress = record.progress_state()
            if progress.status == "queued":
                progress.status = "working"
                self._messages.show(progress, record.channel, record.progress_ts)
            where = Where(record.channel, job.requester, record.thread_ts)

            async def give_back_slot() -> None:  # a run waiting for approval is not one of the person's active ones
                if self._queue is not None:
                    await self._queue.release(job.requester, job.run_id)

            await self._io.run(self._start(record, progress, turn, paused=give_back_slot), f"run {job.run_id}", where)
        finally:
            if self._queue is not None:
                await self._queue.release(job.requester, job.run_id)

    async def _start(
        self, record: RunRecord, progress: Progress, turn: Turn, *, paused: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run the task until it ends or pauses; ``paused`` is awaited as its review is asked for, before the
        card is posted."""
        listener = self._messages.listener(record, progress)

        async def on_event(event: RunEvent) -> None:
            if paused is not None and isinstance(event, ReviewRequested):
                await paused()  # before its card shows: whoever sees the card finds the run paused
            await listener(event)

        try:
            await self._runs.start(record.run_id, record.task, requester=record.requester, on_event=on_event)
        except LockLost:
            raise
        except (RunBusy, RunPaused) as exc:
            progress.status, progress.error = "failed", str(exc)
            self._messages.show(progress, record.channel, record.progress_ts)
        finally:
            # From here on the thread's lock or its pending review says whether the run is busy.
            await self._store.release_turn(record.run_id, turn)

    # --- the sweeper ------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire reviews that waited longer than the policy allows, post cards that never reached Slack, and
        carry on runs whose process died. Every replica sweeps; locks make one of them win each run or card."""
        period = max(0.5, min(5.0, self._policy.expires_after_s / 4))
        while True:
            try:
                await self._sweep_once()
            except RedisError as exc:
                log.error("sweep: Redis is not answering (%s); trying again in %.0fs", type(exc).__name__, period)
            except Exception:  # the sweeper must outlive anything
                log.exception("sweep failed; trying again in %.0fs", period)
            await asyncio.sleep(period)

    async def _sweep_once(self) -> None:
        now = time.time()
        for pending in await self._runs.pending():
            if now - pending.created_at > self._policy.expires_after_s:
                await self.expire(pending)
            elif self._messages.card_due(pending, await self._store.run(pending.thread_id), now):
                self._sweep_task(pending.thread_id, self._messages.redeliver_card(pending), "card")
        for run_id in await self._runs.orphans():
            self._sweep_task(run_id, self._recover(run_id), "recover")

    def _sweep_task(self, run_id: str, work: Coroutine[Any, Any, None], what: str) -> None:
        """One piece of sweeper work per run at a time in this replica (the next sweep may find it again)."""
        if run_id in self._working:
            work.close()
            return
        self._working.add(run_id)

        async def tracked() -> None:
            try:
                await work
            finally:
                self._working.discard(run_id)

        self._io.spawn(tracked(), f"{what} {run_id}")

    async def _recover(self, run_id: str) -> None:
        record = await self._store.run(run_id)
        if record is None or not record.progress_ts:
            # No Slack message to show it on (its record expired, or it began outside Slack): carried on all the
            # same, so it does not stay listed as running for ever.
            try:
                await self._runs.recover(run_id)
            except RunBusy:
                pass
            return
        progress = record.progress_state()
        progress.status, progress.note = "working", "picked up again after a restart"
        self._messages.show(progress, record.channel, record.progress_ts)
        try:
            await self._runs.recover(run_id, on_event=self._messages.listener(record, progress))
        except LockLost:
            raise
        except RunBusy:
            pass  # another replica got there first

    async def expire(self, pending: PendingReview) -> bool:
        """End a run whose review waited too long; False if it was decided (or expired elsewhere) meanwhile."""
        if not await self._runs.expire(pending.thread_id, pending.interrupt_id):
            return False
        after = _duration(self._policy.expires_after_s)
        await self._audit.record(
            AuditEntry(
                pending.thread_id,
                "expired",
                "system",
                details={
                    "interrupt": pending.interrupt_id,
                    "waited_s": round(time.time() - pending.created_at, 1),
                    "calls": [a["name"] for a in pending.request["action_requests"]],
                },
            )
        )
        await self._messages.close_card(
            pending.thread_id,
            pending,
            title="Approval expired",
            reason=f"Expired: nobody decided within {after}; nothing ran",
        )
        await self._messages.show_end(pending.thread_id, "expired", f"expired after {after}")
        return True

    # --- admin actions ----------------------------------------------------------------------------

    async def cancel(self, run_id: str, by: str) -> None:
        pending = await self._runs.pending_review(run_id)
        await self._runs.cancel(run_id, by=by)
        await self._audit.record(
            AuditEntry(run_id, "cancelled", by, details={"interrupt": pending.interrupt_id if pending else None})
        )
        if pending is not None:
            await self._messages.close_card(
                run_id, pending, title="Approval cancelled", reason=f"Cancelled by <@{by}>; nothing ran"
            )
        await self._messages.show_end(run_id, "cancelled", f"cancelled by <@{by}>")

    async def rewind(self, run_id: str, checkpoint: str | None, by: str) -> str:
        """Fork the run from a checkpoint; old cards go stale, anything with side effects gets a new card."""
        record = await self._store.run(run_id) or RunRecord(run_id)
        old = await self._runs.pending_review(run_id)
        target = await self._runs.rewind_target(run_id, checkpoint)
        if old is not None:
            await self._messages.close_card(
                run_id, old, title="Approval replaced", reason=f"Rewound by <@{by}>: this card is no longer current"
            )
        await self._audit.record(AuditEntry(run_id, "rewound", by, details={"checkpoint": target.checkpoint_id[-8:]}))
        await self._io.post(
            record.channel,
            record.thread_ts,
            f"Run `{run_id}` was rewound by <@{by}> to checkpoint `{target.checkpoint_id[-8:]}` "
            f"({literal(clip(target.summary, 200))}); anything with side effects needs a fresh approval.",
        )
        progress = Progress(run_id, record.requester or None, record.task, note=f"rewound by <@{by}>")
        await self._store.save_progress(run_id, progress)
        self._messages.show(progress, record.channel, record.progress_ts)
        self._io.spawn(
            self._runs.rewind(run_id, target.checkpoint_id, by=by, on_event=self._messages.listener(record, progress)),
            f"rewind {run_id}",
        )
        return target.checkpoint_id


def _paused(run_id: str) -> str:
    return f"Run `{run_id}` in this thread is waiting for approval on the card above; decide or cancel it first."


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
