"""Turns runs into Slack messages and clicks into decisions: the bot's side of the runs seam.

Listeners call in here after they acked; anything slow (the agent, tools, Slack posts) runs in this
object's own asyncio tasks, never inside a listener, so every click is acknowledged within Slack's 3 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from graphs.errors import (
    InvalidArguments,
    InvalidDecision,
    LockLost,
    NotPending,
    RunBusy,
    RunPaused,
)
from graphs.policy import ToolRule
from graphs.runs import Runs
from graphs.types import (
    Decision,
    PendingReview,
    ReviewDecided,
    ReviewRequested,
    RunEvent,
    Token,
)

from .approvers import Approvers
from .audit import AuditEntry, AuditLog
from .blocks import clip, literal
from .cards import (
    CardRef,
    MalformedCard,
    approval_card,
    args_modal,
    closed_card,
    decided_card,
    edit_modal,
    parse_edit,
    parse_edit_metadata,
    reject_modal,
    selected_indexes,
)
from .progress import Progress
from .store import SlackStore, ViewBinding, new_run_id
from .updates import MessageUpdater

log = logging.getLogger(__name__)

STALE_CARD = "This card is no longer current: it was already decided, replaced by a newer card, or the run ended."
NOT_THE_CARD = "That button is not on this run's approval card; nothing was changed. Use the card in the run's thread."
NOT_RECORDED = "I could not record that: my storage is not answering. Nothing was changed; try again in a minute."
LEADING_MENTIONS = re.compile(r"^\s*(<@[UW][A-Z0-9]+(\|[^>]*)?>[\s,:]*)+")
POST_ATTEMPTS = 4
# A click waits this long for a thread held elsewhere: longer than the lock's expiry, so a lock left by a
# crashed replica does not refuse the click; a live holder keeps it longer, and then the click is refused.
RESUME_WAIT_S = 20.0
TOKEN_RENDER_S = 0.5
# A card not on Slack this long after its review was checkpointed is re-posted by a sweeper (the process that
# should have posted it died, or Slack refused it); then with back-off, for as long as the review may wait.
CARD_GRACE_S = 10.0
CARD_RETRY_MAX_S = 300.0


@dataclass(frozen=True)
class Where:
    """Who to tell, and where, when work started by a click or a mention cannot be done."""

    channel: str
    user: str
    thread_ts: str | None = None


@dataclass(frozen=True)
class Click:
    """A button click as Slack delivered it: who, and on which message (the card) in which channel/thread."""

    user: str
    channel: str
    card_ts: str | None = None
    thread_ts: str | None = None
    trigger_id: str = ""


class Undelivered(Exception):
    """chat.postMessage failed for good this time; ``retry_after`` is Slack's Retry-After when it gave one."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SlackRuns:
    def __init__(
        self,
        runs: Runs,
        client: AsyncWebClient,
        store: SlackStore,
        updater: MessageUpdater,
        approvers: Approvers,
        audit: AuditLog,
    ) -> None:
        self.runs = runs
        self.client = client
        self.store = store
        self.updater = updater
        self.approvers = approvers
        self.audit = audit
        self.policy = runs.policy
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recovering: set[str] = set()
        self._redelivering: set[str] = set()

    # --- background work ------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any], what: str, *, where: Where | None = None) -> asyncio.Task[Any]:
        """Run ``work`` in the bot's own task. If Redis fails under it, ``where`` (the person who clicked or
        asked) is told it could not be recorded, instead of the request vanishing after its ack."""
        task = asyncio.create_task(self._guarded(work, what, where), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def _guarded(self, work: Coroutine[Any, Any, Any], what: str, where: Where | None) -> Any:
        try:
            return await work
        except RedisError as exc:
            log.error("%s: could not reach Redis (%s); the request was not recorded", what, type(exc).__name__)
            if where is not None:
                await self._tell(where.channel, where.user, NOT_RECORDED, where.thread_ts)
        except LockLost as exc:
            log.warning("%s: %s", what, exc)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let running work finish (bounded); what is cut off stays checkpointed in Redis."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)

    # --- asking -----------------------------------------------------------------------------------

    async def ask(self, *, channel: str, user: str, text: str, message_ts: str, thread_ts: str | None) -> None:
        """Someone asked the bot for a task (mention, DM or /chatops run): answer in the thread."""
        task = LEADING_MENTIONS.sub("", text).strip()
        slack_thread = thread_ts or message_ts
        if not task:
            await self._post(channel, slack_thread, "Tell me what to do, e.g. _check the API and run the disk-usage runbook_.")
            return
        run_id = await self.store.claim_thread(channel, slack_thread, new_run_id())
        # One thread, one run, one requester: the turn is claimed with who asked for what in one atomic step,
        # so a second mention a moment later is told what is under way instead of taking the run over.
        turn = await self.store.claim_turn(run_id, requester=user, task=task)
        if not turn.mine:
            await self._post(channel, slack_thread, f"Run `{run_id}` in this thread is already working on "
                             f"“{literal(clip(turn.task, 200))}” for <@{turn.requester}>; ask again when it is done.")
            return
        started = False
        try:
            refusal = await self._busy_reason(run_id)
            if refusal:
                await self._post(channel, slack_thread, refusal)
                return
            progress = Progress(run_id, user, task)
            fallback, blocks = progress.render()
            posted = await self._post(channel, slack_thread, fallback, blocks)
            if posted is None:
                return
            await self.store.save_run(
                run_id, channel=channel, thread_ts=slack_thread, progress_ts=posted, requester=user, task=task,
                progress=progress.to_json(),
            )
            self.spawn(self._start(run_id, task, user, progress, channel, posted, turn), f"run {run_id}",
                       where=Where(channel, user, slack_thread))
            started = True
        finally:
            if not started:
                await self.store.release_turn(run_id, turn)

    async def ask_from_command(self, *, channel: str, user: str, task: str) -> None:
        """/chatops run: the request becomes a visible message the thread hangs off."""
        root = await self._post(channel, None, f"<@{user}> asked: {literal(task)}")
        if root is None:
            await self._tell(channel, user, "I could not post in this channel; invite me first (`/invite @chatops`).")
            return
        await self.ask(channel=channel, user=user, text=task, message_ts=root, thread_ts=None)

    async def _busy_reason(self, run_id: str) -> str | None:
        pending = await self.runs.pending_review(run_id)
        if pending is not None:
            return f"Run `{run_id}` in this thread is waiting for approval on the card above; decide or cancel it first."
        if await self.runs.locks.is_held(run_id):
            return f"Run `{run_id}` in this thread is still working; ask again when it is done."
        return None

    async def _start(self, run_id: str, task: str, user: str, progress: Progress, channel: str, progress_ts: str,
                     turn: Any) -> None:
        on_event = self._listener(run_id, progress, channel, progress_ts)
        try:
            await self.runs.start(run_id, task, requester=user, on_event=on_event)
        except (RunBusy, RunPaused) as exc:
            if isinstance(exc, LockLost):
                raise
            progress.status, progress.error = "failed", str(exc)
            self._show(progress, channel, progress_ts)
        finally:
            # From here on the thread's lock or its pending review says whether the run is busy.
            await self.store.release_turn(run_id, turn)

    # --- progress -------------------------------------------------------------------------------

    def _show(self, progress: Progress, channel: str, ts: str) -> None:
        text, blocks = progress.render()
        # End states and pauses jump the queue; streaming progress waits its turn.
        self.updater.submit(channel, ts, text=text, blocks=blocks, final=progress.final or progress.status == "waiting")

    def _listener(self, run_id: str, progress: Progress, channel: str, progress_ts: str):  # noqa: ANN202
        last_shown = [0.0]

        async def on_event(event: RunEvent) -> None:
            if isinstance(event, Token):
                # Tokens arrive by the dozen per second; a message is edited at most about once a second, so
                # render now and then. Every stream ends with another event, which renders the latest text.
                progress.apply(event)
                now = time.monotonic()
                if now - last_shown[0] >= TOKEN_RENDER_S:
                    last_shown[0] = now
                    self._show(progress, channel, progress_ts)
                return
            if isinstance(event, ReviewDecided):
                await self._show_decision(run_id, event)
                await self._audit_decision(run_id, event)
                progress.decided([(a["tool_call_id"], d["type"]) for a, d in
                                  zip(event.request["action_requests"], event.decisions)], event.decided_by or "?")
            if isinstance(event, ReviewRequested):
                # The card first: the progress message says "see the card below" only once there is one.
                progress.card_undelivered = not await self._deliver_card(run_id, event.interrupt_id, event.request)
            if progress.apply(event) or isinstance(event, ReviewDecided):
                self._show(progress, channel, progress_ts)
            if isinstance(event, ReviewRequested) or progress.final:
                await self.store.save_run(run_id, progress=progress.to_json())

        return on_event

    # --- cards ------------------------------------------------------------------------------------

    async def _deliver_card(self, run_id: str, interrupt_id: str, request: dict[str, Any]) -> bool:
        """Post the approval card of a pending review, once; True if it is on Slack. Called by whoever holds the
        thread's lock (the run's driver, or ``redeliver_card``), so two replicas never post one card twice. A
        failure is recorded with when to try again, and any replica's sweeper tries again then."""
        meta = await self.store.run(run_id)
        if meta.get("card_interrupt") == interrupt_id and meta.get("card_ts"):
            return True
        pending = await self.runs.pending_review(run_id)
        if pending is None or pending.interrupt_id != interrupt_id:
            return True  # decided, rewound or cancelled meanwhile: nothing to post
        ref = CardRef(run_id, interrupt_id)
        text, blocks = approval_card(
            ref, request, requester=meta.get("requester"), task=meta.get("task", ""),
            required=self._required(request, range(len(request["action_requests"]))),
            expires_at=pending.created_at + self.policy.expires_after_s,
        )
        attempts = int(meta.get("card_attempts") or 0) + 1 if meta.get("card_for") == interrupt_id else 1
        try:
            ts = await self._post_message(meta["channel"], meta["thread_ts"], text, blocks,
                                          attempts=POST_ATTEMPTS if attempts == 1 else 1)
        except Undelivered as exc:
            delay = min(CARD_RETRY_MAX_S, max(exc.retry_after, CARD_GRACE_S * 2 ** min(attempts - 1, 8)))
            log.warning("the approval card of run %s was not delivered (attempt %d: %s); trying again in %.0fs",
                        run_id, attempts, exc, delay)
            await self.store.save_run(run_id, card_for=interrupt_id, card_attempts=attempts,
                                      card_retry_at=time.time() + delay)
            return False
        await self.store.save_run(run_id, card_ts=ts, card_channel=meta["channel"], card_interrupt=interrupt_id,
                                  card_for=interrupt_id, card_attempts=0, card_retry_at="")
        return True

    async def redeliver_card(self, pending: PendingReview) -> None:
        """A pending review whose card is not on Slack: post it, and say on the progress message how it stands."""
        try:
            # The thread's lock: not while its driver (maybe posting this very card) or a click holds it.
            async with self.runs.locks.hold(pending.thread_id):
                delivered = await self._deliver_card(pending.thread_id, pending.interrupt_id, pending.request)
                meta = await self.store.run(pending.thread_id)
                if not meta.get("progress_ts"):
                    return
                progress = Progress.from_json(meta["progress"]) if meta.get("progress") else Progress(
                    pending.thread_id, pending.requester, pending.task)
                if progress.status == "waiting" and progress.card_undelivered == (not delivered):
                    return  # the message already says so
                progress.status, progress.card_undelivered = "waiting", not delivered
                await self.store.save_run(pending.thread_id, progress=progress.to_json())
                self._show(progress, meta["channel"], meta["progress_ts"])
        except RunBusy:
            pass  # someone is working on the thread; the next sweep looks again
        finally:
            self._redelivering.discard(pending.thread_id)

    def card_due(self, pending: PendingReview, meta: dict[str, str], now: float) -> bool:
        """Whether a pending review's card is missing from Slack and it is time to try posting it."""
        if meta.get("card_interrupt") == pending.interrupt_id and meta.get("card_ts"):
            return False
        if meta.get("card_for") == pending.interrupt_id and meta.get("card_retry_at"):
            return now >= float(meta["card_retry_at"])
        return now - pending.created_at >= CARD_GRACE_S  # the run's own process had its chance

    async def _show_decision(self, run_id: str, event: ReviewDecided) -> None:
        meta = await self.store.run(run_id)
        if not meta.get("card_ts") or meta.get("card_interrupt") != event.interrupt_id:
            return
        ref = CardRef(run_id, event.interrupt_id)
        text, blocks = decided_card(
            ref, event.request, event.decisions, decided_by=event.decided_by or "?",
            requester=meta.get("requester"), task=meta.get("task", ""),
        )
        self.updater.submit(meta.get("card_channel") or meta["channel"], meta["card_ts"], text=text, blocks=blocks,
                            final=True)

    # --- deciding -------------------------------------------------------------------------------

    def _rules(self, request: dict[str, Any], indexes: Any) -> list[tuple[str, ToolRule]]:
        actions = request["action_requests"]
        return [(actions[n]["name"], self.policy.rule(actions[n]["name"])) for n in indexes]

    def _required(self, request: dict[str, Any], indexes: Any) -> int:
        return max((rule.required_approvals for _, rule in self._rules(request, indexes)), default=1)

    async def check_click(self, ref: CardRef, click: Click) -> tuple[PendingReview, dict[str, str]] | str:
        """The pending review a click on ``ref`` answers, or why the click is refused (stale, expired, or not
        on this review's card). A click counts only on the card it names: in that channel, on that message."""
        meta = await self.store.run(ref.run_id)
        if not meta:
            return f"I know no run `{ref.run_id}`; it may have expired."
        pending = await self.runs.pending_review(ref.run_id)
        if pending is None or pending.interrupt_id != ref.interrupt_id:
            return STALE_CARD
        if meta.get("card_interrupt") == ref.interrupt_id and meta.get("card_ts"):
            if (click.channel, click.card_ts) != (meta.get("card_channel") or meta["channel"], meta["card_ts"]):
                log.warning("refused a click by %s on run %s: it came from %s/%s, not from the card %s/%s",
                            click.user, ref.run_id, click.channel, click.card_ts, meta.get("card_channel"),
                            meta["card_ts"])
                return NOT_THE_CARD
        else:
            # The process that posted this card died before it noted where: the click tells, and counts only
            # from the run's own thread.
            if click.channel != meta.get("channel") or (click.thread_ts or "") != meta.get("thread_ts") or not click.card_ts:
                log.warning("refused a click by %s on run %s from outside its thread", click.user, ref.run_id)
                return NOT_THE_CARD
            await self.store.save_run(ref.run_id, card_ts=click.card_ts, card_channel=click.channel,
                                      card_interrupt=ref.interrupt_id, card_for=ref.interrupt_id, card_retry_at="")
            meta = {**meta, "card_ts": click.card_ts, "card_channel": click.channel, "card_interrupt": ref.interrupt_id}
        if time.time() - pending.created_at > self.policy.expires_after_s:
            await self.expire(pending)
            return "This approval expired before anyone decided; ask again if it is still needed."
        return pending, meta

    async def _clicked(self, value: Any, click: Click) -> tuple[CardRef, PendingReview, dict[str, str]] | None:
        """The card a button click answers, or None after telling the clicker why not."""
        try:
            ref = CardRef.parse(value)
        except MalformedCard as exc:
            log.warning("refused a click from %s: %s", click.user, exc)
            await self._tell(click.channel, click.user, "That button is not one of mine; nothing was changed.",
                             click.thread_ts)
            return None
        checked = await self.check_click(ref, click)
        if isinstance(checked, str):
            await self._tell(click.channel, click.user, checked, click.thread_ts)
            return None
        return ref, *checked

    async def decide(self, *, value: Any, click: Click, state_values: Any) -> None:
        """Approve (selected) on a card. Runs after the click was acked."""
        clicked = await self._clicked(value, click)
        if clicked is None:
            return
        ref, pending, meta = clicked
        count = len(pending.request["action_requests"])
        proposal = await self.store.proposal(ref.run_id, ref.interrupt_id)
        if proposal is not None:
            decisions: list[Decision] = json.loads(proposal)
        else:
            ticked = selected_indexes(state_values, ref.interrupt_id)
            ticked = set(range(count)) if ticked is None else ticked
            if not ticked:
                await self._tell(click.channel, click.user, "Nothing is ticked: tick the calls to allow, or click Reject.",
                                 click.thread_ts)
                return
            decisions = [
                {"type": "approve"} if n in ticked else {"type": "reject", "message": "not ticked by the approver"}
                for n in range(count)
            ]
        await self.approve(ref, pending, meta, decisions, click.user, click.channel)

    async def approve(
        self, ref: CardRef, pending: PendingReview, meta: dict[str, str], decisions: list[Decision], user: str, channel: str
    ) -> None:
        """One approver's yes. Resumes the run once the card has as many distinct approvers as its policy asks."""
        allowed = [n for n, d in enumerate(decisions) if d["type"] != "reject"]
        refusal = await self.approvers.refusal(user, meta.get("requester") or None, self._rules(pending.request, allowed))
        if refusal:
            await self._tell(channel, user, refusal, meta.get("thread_ts"))
            return
        required = self._required(pending.request, allowed)
        if required <= 1:
            await self.resume(ref, decisions, user, channel)
            return
        standing = json.loads(await self.store.propose(ref.run_id, ref.interrupt_id, json.dumps(decisions)))
        added, approvers = await self.store.add_approver(ref.run_id, ref.interrupt_id, user)
        if not added:
            await self._tell(channel, user, f"You already approved this; it needs {required - len(approvers)} more approver(s).",
                             meta.get("thread_ts"))
            return
        await self.audit.record(AuditEntry(ref.run_id, "approval", user, details={
            "count": len(approvers), "required": required, "interrupt": ref.interrupt_id}))
        if len(approvers) < required:
            text, blocks = approval_card(
                ref, pending.request, requester=meta.get("requester"), task=meta.get("task", ""), required=required,
                approved_by=approvers, proposal=standing, expires_at=pending.created_at + self.policy.expires_after_s,
            )
            self.updater.submit(meta["channel"], meta["card_ts"], text=text, blocks=blocks, final=True)
            return
        await self.resume(ref, standing, ",".join(approvers), channel, notify=user)

    async def resume(
        self, ref: CardRef, decisions: list[Decision], decided_by: str, channel: str, *, notify: str | None = None
    ) -> None:
        who = notify or decided_by
        meta = await self.store.run(ref.run_id)
        progress = Progress.from_json(meta["progress"]) if meta.get("progress") else Progress(ref.run_id, None, "")
        on_event = self._listener(ref.run_id, progress, meta["channel"], meta["progress_ts"])
        try:
            await self.runs.resume(
                ref.run_id, ref.interrupt_id, decisions, decided_by=decided_by, on_event=on_event, wait_s=RESUME_WAIT_S
            )
        except LockLost:
            raise
        except RunBusy:
            await self._tell(channel, who, "Someone else is deciding this card right now; nothing was changed.",
                             meta.get("thread_ts"))
        except NotPending:
            await self._tell(channel, who, STALE_CARD, meta.get("thread_ts"))
        except InvalidDecision as exc:
            await self._tell(channel, who, f"Not accepted: {literal(str(exc))}", meta.get("thread_ts"))

    async def _open_dialog(self, *, value: Any, click: Click, kind: str) -> None:
        clicked = await self._clicked(value, click)
        if clicked is None:
            return
        ref, pending, meta = clicked
        everything = self._rules(pending.request, range(len(pending.request["action_requests"])))
        card_ts = meta["card_ts"]
        if kind == "reject":
            if not await self.approvers.may_reject(click.user, meta.get("requester") or None, everything):
                await self._tell(click.channel, click.user, "You are not an approver of any call on this card.",
                                 click.thread_ts)
                return
            view = reject_modal(ref, channel=click.channel, card_ts=card_ts)
        else:
            if await self.store.proposal(ref.run_id, ref.interrupt_id) is not None:
                await self._tell(click.channel, click.user, "The first approver's proposal stands; approve or reject it.",
                                 click.thread_ts)
                return
            view = edit_modal(ref, pending.request, channel=click.channel, card_ts=card_ts)
        try:
            opened = await self.client.views_open(trigger_id=click.trigger_id, view=view)
        except SlackApiError as exc:
            log.warning(
                "could not open the %s dialog for run %s: %s %s", kind, ref.run_id, exc.response.get("error"),
                (exc.response.get("response_metadata") or {}).get("messages", ""),
            )
            await self._tell(click.channel, click.user, "Slack did not open the dialog in time; click the button again.",
                             click.thread_ts)
            return
        # A submission counts only for the view opened here, for this person and this card.
        await self.store.bind_view(opened["view"]["id"], ViewBinding(
            click.user, ref.run_id, ref.interrupt_id, click.channel, card_ts, kind))

    async def open_editor(self, *, value: Any, click: Click) -> None:
        await self._open_dialog(value=value, click=click, kind="edit")

    async def open_rejector(self, *, value: Any, click: Click) -> None:
        await self._open_dialog(value=value, click=click, kind="reject")

    async def open_arguments(self, *, value: Any, index: int, click: Click) -> None:
        """"Show in full": every value of one call of a card, exact, in a dialog (read-only)."""
        clicked = await self._clicked(value, click)
        if clicked is None:
            return
        ref, pending, _ = clicked
        if not 0 <= index < len(pending.request["action_requests"]):
            await self._tell(click.channel, click.user, "That button is not one of mine; nothing was changed.",
                             click.thread_ts)
            return
        proposal = await self.store.proposal(ref.run_id, ref.interrupt_id)
        decision = json.loads(proposal)[index] if proposal is not None else None
        args = decision["edited_action"]["args"] if decision and decision["type"] == "edit" else None
        try:
            await self.client.views_open(trigger_id=click.trigger_id, view=args_modal(ref, pending.request, index, args))
        except SlackApiError as exc:
            log.warning("could not open the arguments of run %s: %s", ref.run_id, exc.response.get("error"))
            await self._tell(click.channel, click.user, "Slack did not open the dialog in time; click the button again.",
                             click.thread_ts)

    async def dialog(self, view: dict[str, Any], user: str, kind: str) -> tuple[CardRef, ViewBinding] | None:
        """The card a submitted dialog answers, if the bot opened that very view for this user, of this kind,
        for that card; else None (logged). Forged, replayed and other people's submissions count for nothing."""
        binding = await self.store.view_binding(str(view.get("id") or ""))
        try:
            ref, channel, card_ts = parse_edit_metadata(view)
        except MalformedCard:
            ref = None
        if (binding is None or ref is None or binding.user != user or binding.kind != kind
                or (binding.run_id, binding.interrupt_id) != (ref.run_id, ref.interrupt_id)):
            log.warning("refused a %s dialog submission by %s: not a dialog the bot opened for them (view %s)",
                        kind, user, str(view.get("id"))[:40])
            return None
        return ref, binding

    async def check_edit(self, ref: CardRef, binding: ViewBinding, values: Any) -> tuple[list[Decision], dict[str, str]]:
        """Field errors for the edit dialog (by block id), or the decisions it stands for."""
        checked = await self.check_click(ref, Click(binding.user, binding.channel, binding.card_ts))
        if isinstance(checked, str):
            return [], {"include_0": checked}
        pending, _ = checked
        decisions, errors, fields = parse_edit(values, pending.request)
        for n, decision in enumerate(decisions):
            if decision["type"] != "edit" or any(b in errors for b in fields.get(n, {}).values()):
                continue
            try:
                await self.runs.check_edit(decision["edited_action"]["name"], decision["edited_action"]["args"])
            except InvalidArguments as exc:
                for name, message in exc.errors.items():
                    errors[fields[n].get(name.split(".")[0], f"include_{n}")] = message
        if not errors and all(d["type"] == "reject" for d in decisions):
            errors["include_0"] = "Every call is unticked: tick at least one, or close this and click Reject on the card."
        return decisions, errors

    async def submit_edit(self, ref: CardRef, binding: ViewBinding, decisions: list[Decision]) -> None:
        click = Click(binding.user, binding.channel, binding.card_ts)
        checked = await self.check_click(ref, click)
        if isinstance(checked, str):
            await self._tell(binding.channel, binding.user, checked)
            return
        pending, meta = checked
        await self.approve(ref, pending, meta, decisions, binding.user, binding.channel)

    async def veto(self, ref: CardRef, binding: ViewBinding, reason: str) -> None:
        """A rejection: one is enough, whatever the card's number of required approvals."""
        checked = await self.check_click(ref, Click(binding.user, binding.channel, binding.card_ts))
        if isinstance(checked, str):
            await self._tell(binding.channel, binding.user, checked)
            return
        pending, meta = checked
        everything = self._rules(pending.request, range(len(pending.request["action_requests"])))
        if not await self.approvers.may_reject(binding.user, meta.get("requester") or None, everything):
            await self._tell(binding.channel, binding.user, "You are not an approver of any call on this card.")
            return
        decisions: list[Decision] = [{"type": "reject", "message": reason} for _ in pending.request["action_requests"]]
        await self.resume(ref, decisions, binding.user, binding.channel)

    async def _audit_decision(self, run_id: str, event: ReviewDecided) -> None:
        by = event.decided_by or "?"
        for action, decision in zip(event.request["action_requests"], event.decisions):
            call = {"id": action["tool_call_id"], "name": action["name"], "args": action["args"]}
            details: dict[str, Any] = {"interrupt": event.interrupt_id}
            if decision["type"] == "edit":
                call["args"] = decision["edited_action"]["args"]
                details.update(old_args=action["args"], new_args=decision["edited_action"]["args"])
            if decision["type"] == "reject" and decision.get("message"):
                details["reason"] = decision["message"]
            kind = {"approve": "approved", "edit": "edited", "reject": "rejected"}[decision["type"]]
            await self.audit.record(AuditEntry(run_id, kind, by, tool_call=call, details=details))

    # --- ending and rewinding runs ----------------------------------------------------------------

    async def _close_card(self, run_id: str, pending: PendingReview, *, title: str, reason: str) -> None:
        meta = await self.store.run(run_id)
        if not meta.get("card_ts") or meta.get("card_interrupt") != pending.interrupt_id:
            return
        text, blocks = closed_card(CardRef(run_id, pending.interrupt_id), pending.request, title=title, reason=reason,
                                   task=meta.get("task", ""))
        self.updater.submit(meta.get("card_channel") or meta["channel"], meta["card_ts"], text=text, blocks=blocks,
                            final=True)

    async def _show_end(self, run_id: str, status: str, note: str) -> None:
        meta = await self.store.run(run_id)
        if not meta.get("progress_ts"):
            return
        progress = Progress.from_json(meta["progress"]) if meta.get("progress") else Progress(run_id, None, "")
        progress.status, progress.note = status, note
        await self.store.save_run(run_id, progress=progress.to_json())
        self._show(progress, meta["channel"], meta["progress_ts"])

    async def expire(self, pending: PendingReview) -> bool:
        if not await self.runs.expire(pending.thread_id, pending.interrupt_id):
            return False
        after = _duration(self.policy.expires_after_s)
        await self.audit.record(AuditEntry(pending.thread_id, "expired", "system", details={
            "interrupt": pending.interrupt_id, "waited_s": round(time.time() - pending.created_at, 1),
            "calls": [a["name"] for a in pending.request["action_requests"]]}))
        await self._close_card(pending.thread_id, pending, title="Approval expired",
                               reason=f"Expired: nobody decided within {after}; nothing ran")
        await self._show_end(pending.thread_id, "expired", f"expired after {after}")
        return True

    async def sweep(self) -> None:
        """Expire reviews that waited longer than the policy allows, post cards that never reached Slack, and
        carry on runs whose process died. Every replica sweeps; locks make one of them win each run or card."""
        period = max(0.5, min(5.0, self.policy.expires_after_s / 4))
        while True:
            try:
                now = time.time()
                for pending in await self.runs.pending():
                    if now - pending.created_at > self.policy.expires_after_s:
                        await self.expire(pending)
                        continue
                    if pending.thread_id in self._redelivering:
                        continue
                    if self.card_due(pending, await self.store.run(pending.thread_id), now):
                        self._redelivering.add(pending.thread_id)
                        self.spawn(self.redeliver_card(pending), f"card {pending.thread_id}")
                for run_id in await self.runs.orphans():
                    if run_id not in self._recovering:
                        self._recovering.add(run_id)
                        self.spawn(self._recover(run_id), f"recover {run_id}")
            except RedisError as exc:
                log.error("sweep: Redis is not answering (%s); trying again in %.0fs", type(exc).__name__, period)
            except Exception:  # noqa: BLE001 - the sweeper must outlive anything
                log.exception("sweep failed; trying again in %.0fs", period)
            await asyncio.sleep(period)

    async def _recover(self, run_id: str) -> None:
        try:
            meta = await self.store.run(run_id)
            if not meta.get("progress_ts"):
                return
            progress = Progress.from_json(meta["progress"]) if meta.get("progress") else Progress(run_id, None, "")
            progress.status, progress.note = "working", "picked up again after a restart"
            on_event = self._listener(run_id, progress, meta["channel"], meta["progress_ts"])
            self._show(progress, meta["channel"], meta["progress_ts"])
            await self.runs.recover(run_id, on_event=on_event)
        except LockLost:
            raise
        except RunBusy:
            pass  # another replica got there first
        finally:
            self._recovering.discard(run_id)

    async def cancel(self, run_id: str, by: str) -> None:
        pending = await self.runs.pending_review(run_id)
        await self.runs.cancel(run_id, by=by)
        await self.audit.record(AuditEntry(run_id, "cancelled", by, details={
            "interrupt": pending.interrupt_id if pending else None}))
        if pending is not None:
            await self._close_card(run_id, pending, title="Approval cancelled", reason=f"Cancelled by <@{by}>; nothing ran")
        await self._show_end(run_id, "cancelled", f"cancelled by <@{by}>")

    async def rewind(self, run_id: str, checkpoint: str | None, by: str) -> str:
        """Fork the run from a checkpoint; old cards go stale, anything with side effects gets a new card."""
        meta = await self.store.run(run_id)
        old = await self.runs.pending_review(run_id)
        target = await self.runs.rewind_target(run_id, checkpoint)
        if old is not None:
            await self._close_card(run_id, old, title="Approval replaced",
                                   reason=f"Rewound by <@{by}>: this card is no longer current")
        await self.audit.record(AuditEntry(run_id, "rewound", by, details={"checkpoint": target.checkpoint_id[-8:]}))
        await self._post(meta["channel"], meta["thread_ts"],
                         f"Run `{run_id}` was rewound by <@{by}> to checkpoint `{target.checkpoint_id[-8:]}` "
                         f"({literal(clip(target.summary, 200))}); anything with side effects needs a fresh approval.")
        progress = Progress(run_id, meta.get("requester") or None, meta.get("task", ""), note=f"rewound by <@{by}>")
        await self.store.save_run(run_id, progress=progress.to_json())
        self._show(progress, meta["channel"], meta["progress_ts"])
        on_event = self._listener(run_id, progress, meta["channel"], meta["progress_ts"])
        self.spawn(self.runs.rewind(run_id, target.checkpoint_id, by=by, on_event=on_event), f"rewind {run_id}")
        return target.checkpoint_id

    # --- Slack calls ------------------------------------------------------------------------------

    async def _post(self, channel: str, thread_ts: str | None, text: str, blocks: list[dict] | None = None) -> str | None:
        """chat.postMessage with 429 and 5xx handling, or None (logged); background tasks only: it may wait."""
        try:
            return await self._post_message(channel, thread_ts, text, blocks)
        except Undelivered:
            return None

    async def _post_message(self, channel: str, thread_ts: str | None, text: str, blocks: list[dict] | None = None,
                            *, attempts: int = POST_ATTEMPTS) -> str:
        """chat.postMessage, trying ``attempts`` times through 429s (Retry-After) and 5xx (back-off)."""
        retry_after = 0.0
        for attempt in range(attempts):
            try:
                response = await self.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text, blocks=blocks)
                return response["ts"]
            except SlackApiError as exc:
                status = exc.response.status_code
                if status == 429 or status >= 500:
                    retry_after = float(exc.response.headers.get("Retry-After", 1)) if status == 429 else 0.0
                    if attempt + 1 < attempts:
                        await asyncio.sleep(min(retry_after or 2**attempt, 30))
                    continue
                log.error("chat.postMessage to %s failed: %s", channel, exc.response.get("error"))
                raise Undelivered(str(exc.response.get("error"))) from None
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:  # Slack unreachable: like a 5xx
                log.warning("chat.postMessage to %s: %s", channel, type(exc).__name__)
                if attempt + 1 < attempts:
                    await asyncio.sleep(2**attempt)
        log.error("chat.postMessage to %s gave up after %d attempt(s)", channel, attempts)
        raise Undelivered(f"gave up after {attempts} attempt(s)", retry_after)

    async def tell(self, where: Where, text: str) -> None:
        await self._tell(where.channel, where.user, text, where.thread_ts)

    async def _tell(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        """An ephemeral message only ``user`` sees, in the thread it is about when there is one."""
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except SlackApiError as exc:
            log.warning("could not tell %s in %s: %s", user, channel, exc.response.get("error"))
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            log.warning("could not tell %s in %s: %s", user, channel, type(exc).__name__)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
