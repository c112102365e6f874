"""A run's messages in its Slack thread: the progress message, folded from run events, and its approval cards.

The progress message is edited through the ``MessageUpdater`` (coalesced, within Slack's budget). An approval
card is posted by whoever holds the thread's lock — the run's driver when it pauses, or a sweeper for a card
that never reached Slack — so two replicas never post one card twice.

No edit repeats what a card right below in the thread already says: while a run waits on such a card its
progress message is left as it is (unless it was edited since it was posted and must catch up), and the
card's decision is shown on the card, not again on the progress message. So a simple approval cycle (mention,
card, approve, done) costs two ``chat.update``: the decided card and the end state. Where the card is not in
the thread (a review channel) the progress message still says where it went, and a card not delivered yet
still says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from graphs.errors import RunBusy
from graphs.runs import OnEvent, Runs
from graphs.types import (
    PendingReview,
    ReviewDecided,
    ReviewRequest,
    ReviewRequested,
    RunEvent,
    Token,
)

from .approvers import Approvers
from .audit import AuditLog
from .cards import CardRef, approval_card, closed_card, decided_card
from .progress import Progress
from .slack_io import POST_ATTEMPTS, SlackIO, Undelivered
from .store import RunRecord, SlackStore
from .updates import MessageUpdater, OnGone

log = logging.getLogger(__name__)

TOKEN_RENDER_S = 0.5
# A card not on Slack this long after its review was checkpointed is re-posted by a sweeper (the process that
# should have posted it died, or Slack refused it); then with back-off, for as long as the review may wait.
CARD_GRACE_S = 10.0
CARD_RETRY_MAX_S = 300.0


def is_dm(channel: str) -> bool:
    """A direct message with the bot (D…): nobody but the requester sees what is posted there."""
    return channel.startswith("D")


@dataclass(frozen=True)
class ReviewRouting:
    """Where a run's approval cards go: into the run's thread, unless nobody who can decide would see them there.
    Cards of DM requests (and, with ``every_request``, of all requests) go to ``channel`` instead, as messages of
    their own that link back to the request."""

    channel: str | None = None  # CHATOPS_REVIEW_CHANNEL
    every_request: bool = False  # CHATOPS_REVIEW_ALL

    def place(self, record: RunRecord) -> tuple[str, str | None]:
        """(channel, thread_ts or None for a message of its own) where the run's cards are posted."""
        if self.channel and (self.every_request or is_dm(record.channel)) and record.channel != self.channel:
            return self.channel, None
        return record.channel, record.thread_ts or None

    def dead_end(self, channel: str) -> bool:
        """A request from a DM whose cards nobody else could see: there is no review channel to send them to."""
        return is_dm(channel) and not self.channel


class RunMessages:
    def __init__(
        self,
        io: SlackIO,
        store: SlackStore,
        updater: MessageUpdater,
        runs: Runs,
        approvers: Approvers,
        audit: AuditLog,
        routing: ReviewRouting | None = None,
    ) -> None:
        self.routing = routing or ReviewRouting()
        self._io = io
        self._store = store
        self._updater = updater
        self._runs = runs
        self._approvers = approvers
        self._audit = audit
        self._policy = runs.policy

    # --- the progress message ---------------------------------------------------------------------

    def show(self, progress: Progress, channel: str, ts: str) -> None:
        text, blocks = progress.render()
        # End states and pauses jump the queue; streaming progress waits its turn. The budget is shared fairly
        # between the people runs work for, so one person's many runs do not hold back everyone else's.
        self._updater.submit(
            channel,
            ts,
            text=text,
            blocks=blocks,
            final=progress.final or progress.status == "waiting",
            owner=progress.requester or progress.run_id,
        )

    def _leave_as_is(self, channel: str, ts: str, mark: int) -> bool:
        """Whether the progress message can stay as Slack shows it while the card right below speaks: it was not
        edited since it was posted, and what was submitted for it since ``mark`` is withdrawn (older undelivered
        content, e.g. "queued" turning "working", must still go out, and then the message says "waiting")."""
        return not self._updater.edited(channel, ts) and self._updater.withdraw(channel, ts, after=mark)

    def listener(self, record: RunRecord, progress: Progress) -> OnEvent:
        """What the run's events do to its thread: the progress message, cards, decided cards, the audit log."""
        run_id, channel, progress_ts = record.run_id, record.channel, record.progress_ts
        last_shown = [0.0]
        mark = self._updater.version(channel, progress_ts)  # what was submitted before this listener

        async def on_event(event: RunEvent) -> None:
            if isinstance(event, Token):
                # Tokens arrive by the dozen per second; a message is edited at most about once a second, so
                # render now and then. Every stream ends with another event, which renders the latest text.
                progress.apply(event)
                now = time.monotonic()
                if now - last_shown[0] >= TOKEN_RENDER_S:
                    last_shown[0] = now
                    self.show(progress, channel, progress_ts)
                return
            card_below = False  # the card of this event is right below the progress message, in its thread
            if isinstance(event, ReviewDecided):
                card_below = await self.show_decision(run_id, event)
                await self._audit.record_decision(run_id, event)
                progress.decided(
                    [
                        (a["tool_call_id"], d["type"], d.get("message", ""))
                        for a, d in zip(event.request["action_requests"], event.decisions, strict=True)
                    ],
                    event.decided_by or "?",
                )
            if isinstance(event, ReviewRequested):
                # The card first: the progress message says where the card is only once there is one.
                delivered = await self.deliver_card(run_id, event.interrupt_id, event.request)
                progress.card_undelivered = not delivered
                if delivered:
                    progress.card_link, card_below = await self._card_place(run_id, event.interrupt_id)
            changed = progress.apply(event)
            if card_below and isinstance(event, ReviewDecided):
                pass  # the decided card right below says who decided what; what runs next is shown as it runs
            elif card_below and self._leave_as_is(channel, progress_ts, mark):
                pass  # "waiting for approval (see the card below)" would repeat the card just posted below it
            elif changed or isinstance(event, ReviewDecided):
                self.show(progress, channel, progress_ts)
            if isinstance(event, ReviewRequested) or progress.final:
                await self._store.save_progress(run_id, progress)

        return on_event

    async def show_end(self, run_id: str, status: str, note: str) -> None:
        """Rewrite the progress message as ended (cancelled, expired) with a note in our own words."""
        record = await self._store.run(run_id)
        if record is None or not record.progress_ts:
            return
        progress = record.progress_state()
        progress.end(status, note=note)
        await self._store.save_progress(run_id, progress)
        self.show(progress, record.channel, record.progress_ts)

    # --- cards --------------------------------------------------------------------------------------

    async def deliver_card(self, run_id: str, interrupt_id: str, request: ReviewRequest) -> bool:
        """Post the approval card of a pending review, once; True if it is on Slack. The caller holds the thread's
        lock. A failure is recorded with when to try again, and any replica's sweeper tries again then."""
        record = await self._store.run(run_id)
        if record is None:
            return False
        if record.card(interrupt_id):
            return True
        pending = await self._runs.pending_review(run_id)
        if pending is None or pending.interrupt_id != interrupt_id:
            return True  # decided, rewound or cancelled meanwhile: nothing to post
        channel, thread_ts = self.routing.place(record)
        text, blocks = approval_card(
            CardRef(run_id, interrupt_id),
            request,
            requester=record.requester,
            task=record.task,
            required=self._approvers.required(request, range(len(request["action_requests"]))),
            expires_at=pending.created_at + self._policy.expires_after_s,
            origin=await self._origin(record, channel),
        )
        attempts = record.card_attempts + 1 if record.card_for == interrupt_id else 1
        try:
            ts = await self._io.post_or_raise(
                channel, thread_ts, text, blocks, attempts=POST_ATTEMPTS if attempts == 1 else 1
            )
        except Undelivered as exc:
            delay = min(CARD_RETRY_MAX_S, max(exc.retry_after, CARD_GRACE_S * 2 ** min(attempts - 1, 8)))
            log.warning(
                "the approval card of run %s was not delivered (attempt %d: %s); trying again in %.0fs",
                run_id,
                attempts,
                exc,
                delay,
            )
            await self._store.update(
                run_id, card_for=interrupt_id, card_attempts=attempts, card_retry_at=time.time() + delay
            )
            return False
        await self._store.update(
            run_id,
            card_ts=ts,
            card_channel=channel,
            card_interrupt=interrupt_id,
            card_for=interrupt_id,
            card_attempts=0,
            card_retry_at=0,
            card_link="",
            card_gone="",
        )
        # The card's link, asked of Slack once, now, so /chatops pending lists links without a Slack call per
        # card. In the background when the card is in the run's thread (the run need not wait for it); at once
        # when it is in a review channel, where the progress message links to it.
        if channel == record.channel:
            self._io.spawn(self._note_link(run_id, channel, ts), f"link the card of {run_id}")
        else:
            await self._note_link(run_id, channel, ts)
        return True

    async def _note_link(self, run_id: str, channel: str, ts: str) -> None:
        """Keep the card's permalink in its run record. Slack's own link rather than one built from the
        workspace URL (auth.test): it carries the thread (thread_ts, cid) as Slack spells it and is right for
        Enterprise Grid domains and a local Slack alike, for one call per card. Without one (Slack not
        answering), /chatops pending notes it when it checks the card."""
        link = await self._io.permalink(channel, ts)
        record = await self._store.run(run_id) if link else None
        if link and record is not None and record.card_ts == ts:
            await self._store.update(run_id, card_link=link)

    def _watch_card(self, run_id: str, ts: str) -> OnGone:
        """What to do when Slack says a card is gone: note it in the run record, so /chatops pending says so."""

        async def gone() -> None:
            record = await self._store.run(run_id)
            if record is not None and record.card_ts == ts and record.card_gone != ts:
                log.warning("the approval card of run %s (%s) is gone from Slack", run_id, ts)
                await self._store.update(run_id, card_gone=ts)

        return gone

    async def _origin(self, record: RunRecord, card_channel: str, *, decided: bool = False) -> str | None:
        """What a card says about where the request was made (our own mrkdwn), when it is not in its thread;
        for an open card in a DM that nobody else can see, says so."""
        if card_channel == record.channel:
            if self.routing.dead_end(record.channel) and not decided:
                return (
                    "only you can see this card in our DM, and no approver can: an admin can set "
                    "CHATOPS_REVIEW_CHANNEL to send such cards where approvers are; you can Reject… to withdraw it"
                )
            return None
        if is_dm(record.channel):
            return "asked in a DM with the bot"
        link = await self._io.permalink(record.channel, record.thread_ts)
        return f"asked in <#{record.channel}>" + (f" (<{link}|the request's thread>)" if link else "")

    async def _card_place(self, run_id: str, interrupt_id: str) -> tuple[str, bool]:
        """Where the review's card is: ``card_elsewhere``'s words, and whether it is on Slack in the run's own
        thread, right below its progress message."""
        record = await self._store.run(run_id)
        card = record.card(interrupt_id) if record else None
        in_thread = record is not None and card is not None and card[0] == record.channel
        return await self.card_elsewhere(run_id, record), in_thread

    async def card_elsewhere(self, run_id: str, record: RunRecord | None = None) -> str:
        """Where the run's current card is, in mrkdwn, when it is not in the run's thread ("" when it is)."""
        record = record or await self._store.run(run_id)
        if record is None or not record.card_ts or record.card_channel in ("", record.channel):
            return ""
        link = record.card_link or await self._io.permalink(record.card_channel, record.card_ts)
        where = f"<#{record.card_channel}>"
        return f"the card is in {where}" + (f": <{link}|open it>" if link else "")

    async def redeliver_card(self, pending: PendingReview) -> None:
        """A pending review whose card is not on Slack: post it, and say on the progress message how it stands."""
        try:
            # The thread's lock: not while its driver (maybe posting this very card) or a click holds it.
            async with self._runs.locks.hold(pending.thread_id):
                delivered = await self.deliver_card(pending.thread_id, pending.interrupt_id, pending.request)
                record = await self._store.run(pending.thread_id)
                if record is None or not record.progress_ts:
                    return
                progress = record.progress_state()
                if progress.status == "waiting" and progress.card_undelivered == (not delivered):
                    return  # the message already says so
                progress.status, progress.card_undelivered = "waiting", not delivered
                progress.card_link = await self.card_elsewhere(pending.thread_id) if delivered else ""
                await self._store.save_progress(pending.thread_id, progress)
                self.show(progress, record.channel, record.progress_ts)
        except RunBusy:
            pass  # someone is working on the thread; the next sweep looks again

    @staticmethod
    def card_due(pending: PendingReview, record: RunRecord | None, now: float) -> bool:
        """Whether a pending review's card is missing from Slack and it is time to try posting it."""
        if record is None or record.card(pending.interrupt_id):
            return False
        if record.card_for == pending.interrupt_id and record.card_retry_at:
            return now >= record.card_retry_at
        return now - pending.created_at >= CARD_GRACE_S  # the run's own process had its chance

    async def show_decision(self, run_id: str, event: ReviewDecided) -> bool:
        """Rewrite the review's card as decided; True if that card is in the run's own thread."""
        record = await self._store.run(run_id)
        card = record.card(event.interrupt_id) if record else None
        if record is None or card is None:
            return False
        text, blocks = decided_card(
            CardRef(run_id, event.interrupt_id),
            event.request,
            event.decisions,
            decided_by=event.decided_by or "?",
            requester=record.requester,
            task=record.task,
            origin=await self._origin(record, card[0], decided=True),
        )
        self._submit_card(record, card, text, blocks)
        return card[0] == record.channel

    def _submit_card(self, record: RunRecord, card: tuple[str, str], text: str, blocks: list[Any]) -> None:
        """A card's new content: what a person just did (decided, approved, closed), so ahead of every run's
        progress and end states."""
        self._updater.submit(
            *card,
            text=text,
            blocks=blocks,
            decision=True,
            owner=record.requester or record.run_id,
            on_gone=self._watch_card(record.run_id, card[1]),
        )

    def show_proposal(
        self,
        ref: CardRef,
        pending: PendingReview,
        record: RunRecord,
        *,
        required: int,
        approved_by: list[str],
        proposal: list[Any],
    ) -> None:
        """A card that needs several approvers, after the first: the standing proposal and who approved so far."""
        card = record.card(ref.interrupt_id)
        if card is None:
            return
        text, blocks = approval_card(
            ref,
            pending.request,
            requester=record.requester,
            task=record.task,
            required=required,
            approved_by=approved_by,
            proposal=proposal,
            expires_at=pending.created_at + self._policy.expires_after_s,
        )
        self._submit_card(record, card, text, blocks)

    async def close_card(self, run_id: str, pending: PendingReview, *, title: str, reason: str) -> None:
        """A card that can no longer be answered (cancelled, expired, replaced), with ``reason`` in our words."""
        record = await self._store.run(run_id)
        card = record.card(pending.interrupt_id) if record else None
        if record is None or card is None:
            return
        text, blocks = closed_card(
            CardRef(run_id, pending.interrupt_id),
            pending.request,
            title=title,
            reason=reason,
            task=record.task,
            requester=record.requester or None,
            origin=await self._origin(record, card[0], decided=True),
        )
        self._submit_card(record, card, text, blocks)
