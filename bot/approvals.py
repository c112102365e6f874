"""Clicks and dialogs into decisions: which card a click answers, who may decide it, several approvers, and
the edit, reject and "show in full" dialogs.

Every check raises a ``Refused`` (bot/errors.py) that ``SlackIO.run`` says to the clicker; nothing here tells
anyone itself.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError

from graphs.errors import (
    InvalidArguments,
    InvalidDecision,
    LockLost,
    NotPending,
    RunBusy,
)
from graphs.runs import Runs
from graphs.types import Decision, PendingReview

from .approvers import Approvers
from .audit import AuditEntry, AuditLog
from .blocks import literal
from .cards import (
    CardRef,
    args_modal,
    edit_modal,
    parse_edit,
    parse_edit_metadata,
    reject_modal,
    selected_indexes,
    task_modal,
)
from .errors import (
    ApprovalExpired,
    DialogRefused,
    MalformedCard,
    NotTheCard,
    Refused,
    StaleCard,
    UnknownRunRef,
)
from .run_messages import RunMessages
from .slack_io import SlackIO, Where
from .store import RunRecord, SlackStore, ViewBinding

log = logging.getLogger(__name__)

# A click waits this long for a thread held elsewhere: longer than the lock's expiry, so a lock left by a
# crashed replica does not refuse the click; a live holder keeps it longer, and then the click is refused.
RESUME_WAIT_S = 20.0
NOT_OPENED = "Slack did not open the dialog in time; click the button again."


@dataclass(frozen=True)
class Click:
    """A button click as Slack delivered it: who, and on which message (the card) in which channel/thread."""

    user: str
    channel: str
    card_ts: str | None = None
    thread_ts: str | None = None
    trigger_id: str = ""

    @property
    def where(self) -> Where:
        return Where(self.channel, self.user, self.thread_ts)


class Approvals:
    def __init__(
        self,
        io: SlackIO,
        store: SlackStore,
        runs: Runs,
        approvers: Approvers,
        audit: AuditLog,
        messages: RunMessages,
        expire: Callable[[PendingReview], Awaitable[bool]],
    ) -> None:
        self._io = io
        self._store = store
        self._runs = runs
        self._approvers = approvers
        self._audit = audit
        self._messages = messages
        self._expire = expire  # Lifecycle.expire: a click on a card past its time closes it
        self._policy = runs.policy

    # --- which card a click answers -------------------------------------------------------------

    async def card_of(self, ref: CardRef, click: Click) -> tuple[PendingReview, RunRecord]:
        """The pending review a click on ``ref`` answers, and its run record; Refused if the click does not
        count. A click counts only on the card it names: in that channel, on that message."""
        record = await self._store.run(ref.run_id)
        if record is None:
            raise UnknownRunRef(f"I know no run `{ref.run_id}`; it may have expired.")
        pending = await self._runs.pending_review(ref.run_id)
        if pending is None or pending.interrupt_id != ref.interrupt_id:
            raise StaleCard()
        card = record.card(ref.interrupt_id)
        if card is not None:
            if (click.channel, click.card_ts) != card:
                log.warning(
                    "refused a click by %s on run %s: it came from %s/%s, not from the card %s/%s",
                    click.user,
                    ref.run_id,
                    click.channel,
                    click.card_ts,
                    *card,
                )
                raise NotTheCard()
        else:
            # The process that posted this card died before it noted where: the click tells, and counts only
            # from where the run's cards are posted (its thread, or the review channel).
            channel, thread_ts = self._messages.routing.place(record)
            if click.channel != channel or (click.thread_ts or None) != thread_ts or not click.card_ts:
                log.warning("refused a click by %s on run %s from outside its thread", click.user, ref.run_id)
                raise NotTheCard()
            await self._store.update(
                ref.run_id,
                card_ts=click.card_ts,
                card_channel=click.channel,
                card_interrupt=ref.interrupt_id,
                card_for=ref.interrupt_id,
                card_retry_at=0,
            )
            record = await self._store.run(ref.run_id) or record
        if time.time() - pending.created_at > self._policy.expires_after_s:
            await self._expire(pending)
            raise ApprovalExpired()
        return pending, record

    async def _clicked(self, value: Any, click: Click) -> tuple[CardRef, PendingReview, RunRecord]:
        ref = CardRef.parse(value)  # MalformedCard for a value that is not one of ours
        return (ref, *await self.card_of(ref, click))

    # --- approving --------------------------------------------------------------------------------

    async def decide(self, *, value: Any, click: Click, state_values: Any) -> None:
        """Approve (selected) on a card. Runs after the click was acked."""
        ref, pending, record = await self._clicked(value, click)
        count = len(pending.request["action_requests"])
        proposal = await self._store.proposal(ref.run_id, ref.interrupt_id)
        if proposal is not None:
            decisions = proposal
        else:
            ticked = selected_indexes(state_values, ref.interrupt_id)
            ticked = set(range(count)) if ticked is None else ticked
            if not ticked:
                await self._approvers.check_decider(click.user, record.requester or None, pending.request)
                raise Refused("Nothing is ticked: tick the calls to allow, or click Reject.")
            decisions = [
                {"type": "approve"} if n in ticked else {"type": "reject", "message": "not ticked by the approver"}
                for n in range(count)
            ]
        await self.approve(ref, pending, record, decisions, click.user)

    async def approve(
        self, ref: CardRef, pending: PendingReview, record: RunRecord, decisions: list[Decision], user: str
    ) -> None:
        """One approver's yes. Resumes the run once the card has as many distinct approvers as its policy asks."""
        allowed = [n for n, d in enumerate(decisions) if d["type"] != "reject"]
        await self._approvers.check_approve(user, record.requester or None, pending.request, allowed)
        required = self._approvers.required(pending.request, allowed)
        if required <= 1:
            await self.resume(ref, decisions, user)
            return
        standing = await self._store.propose(ref.run_id, ref.interrupt_id, decisions)
        added, approvers = await self._store.add_approver(ref.run_id, ref.interrupt_id, user)
        if not added:
            raise Refused(f"You already approved this; it needs {required - len(approvers)} more approver(s).")
        await self._audit.record(
            AuditEntry(
                ref.run_id,
                "approval",
                user,
                details={"count": len(approvers), "required": required, "interrupt": ref.interrupt_id},
            )
        )
        if len(approvers) < required:
            self._messages.show_proposal(
                ref, pending, record, required=required, approved_by=approvers, proposal=standing
            )
            return
        await self.resume(ref, standing, ",".join(approvers))

    async def resume(self, ref: CardRef, decisions: list[Decision], decided_by: str, *, end: bool = False) -> None:
        record = await self._store.run(ref.run_id)
        if record is None:
            raise UnknownRunRef(f"I know no run `{ref.run_id}`; it may have expired.")
        on_event = self._messages.listener(record, record.progress_state())
        try:
            await self._runs.resume(
                ref.run_id,
                ref.interrupt_id,
                decisions,
                decided_by=decided_by,
                end=end,
                on_event=on_event,
                wait_s=RESUME_WAIT_S,
            )
        except LockLost:
            raise
        except RunBusy:
            raise Refused("Someone else is deciding this card right now; nothing was changed.") from None
        except NotPending:
            raise StaleCard() from None
        except InvalidDecision as exc:
            raise Refused(f"Not accepted: {literal(str(exc))}") from None

    # --- dialogs ----------------------------------------------------------------------------------

    async def open_dialog(self, *, value: Any, click: Click, kind: str) -> None:
        """Edit… or Reject… on a card: open that dialog for this person, bound to this card."""
        ref, pending, record = await self._clicked(value, click)
        card_ts = record.card_ts
        if kind == "reject":
            await self._approvers.check_reject(click.user, record.requester or None, pending.request)
            view = reject_modal(ref, channel=click.channel, card_ts=card_ts)
        else:
            # Only someone who may approve a call of this card gets a dialog that offers approving.
            await self._approvers.check_decider(click.user, record.requester or None, pending.request)
            if await self._store.proposal(ref.run_id, ref.interrupt_id) is not None:
                raise Refused("The first approver's proposal stands; approve or reject it.")
            view = edit_modal(ref, pending.request, channel=click.channel, card_ts=card_ts)
        # A submission counts only for the view opened here, for this person and this card. The view carries an
        # external id of ours, bound before Slack shows it, so even an instant submission finds its binding.
        view["external_id"] = secrets.token_urlsafe(18)
        await self._store.bind_view(
            view["external_id"],
            ViewBinding(click.user, ref.run_id, ref.interrupt_id, click.channel, card_ts, kind, click.thread_ts or ""),
        )
        try:
            await self._open(click, view, f"the {kind} dialog of run {ref.run_id}")
        except Refused:
            await self._store.unbind_view(view["external_id"])
            raise

    async def open_arguments(self, *, value: Any, index: int, click: Click) -> None:
        """ "Show in full": every value of one call of a card, exact, in a dialog (read-only). On a card with a
        first approver's proposal, the values it will run with."""
        ref, pending, _ = await self._clicked(value, click)
        if not 0 <= index < len(pending.request["action_requests"]):
            raise MalformedCard(f"no call {index} on the card of run {ref.run_id}")
        proposal = await self._store.proposal(ref.run_id, ref.interrupt_id)
        decision = proposal[index] if proposal is not None else None
        args = decision["edited_action"]["args"] if decision and decision["type"] == "edit" else None
        await self._open(click, args_modal(ref, pending.request, index, args), f"the arguments of run {ref.run_id}")

    async def open_task(self, *, value: Any, click: Click) -> None:
        """ "Show the task in full" on a card: the whole task in a dialog (read-only)."""
        ref, _, record = await self._clicked(value, click)
        await self._open(click, task_modal(ref, record.task), f"the task of run {ref.run_id}")

    async def _open(self, click: Click, view: dict[str, Any], what: str) -> dict[str, Any]:
        """views.open; the opened view as Slack returned it."""
        try:
            response = await self._io.client.views_open(trigger_id=click.trigger_id, view=view)
            return dict(response["view"])
        except SlackApiError as exc:
            log.warning(
                "could not open %s: %s %s",
                what,
                exc.response.get("error"),
                (exc.response.get("response_metadata") or {}).get("messages", ""),
            )
            raise Refused(NOT_OPENED) from None

    async def dialog(self, view: dict[str, Any], user: str, kind: str) -> tuple[CardRef, ViewBinding]:
        """The card a submitted dialog answers, if the bot opened that very view for this user, of this kind,
        for that card; else DialogRefused (logged). Forged, replayed and other people's submissions count for
        nothing."""
        binding = await self._store.view_binding(str(view.get("external_id") or ""))
        try:
            ref: CardRef | None = parse_edit_metadata(view)[0]
        except MalformedCard:
            ref = None
        if (
            binding is None
            or ref is None
            or binding.user != user
            or binding.kind != kind
            or (binding.run_id, binding.interrupt_id) != (ref.run_id, ref.interrupt_id)
        ):
            log.warning(
                "refused a %s dialog submission by %s: not a dialog the bot opened for them (view %s)",
                kind,
                user,
                str(view.get("id"))[:40],
            )
            raise DialogRefused()
        return ref, binding

    async def check_edit(
        self, ref: CardRef, binding: ViewBinding, values: Any
    ) -> tuple[list[Decision], dict[str, str]]:
        """Field errors for the edit dialog (by block id), or the decisions it stands for."""
        try:
            pending, _ = await self.card_of(ref, _click_of(binding))
        except Refused as refusal:
            return [], {"include_0": str(refusal)}
        decisions, errors, fields = parse_edit(values, pending.request)
        for n, decision in enumerate(decisions):
            if decision["type"] != "edit" or any(b in errors for b in fields.get(n, {}).values()):
                continue
            try:
                await self._runs.check_edit(decision["edited_action"]["name"], decision["edited_action"]["args"])
            except InvalidArguments as exc:
                for name, message in exc.errors.items():
                    errors[fields[n].get(name.split(".")[0], f"include_{n}")] = message
        if not errors and all(d["type"] == "reject" for d in decisions):
            errors["include_0"] = (
                "Every call is unticked: tick at least one, or close this and click Reject on the card."
            )
        return decisions, errors

    async def submit_edit(self, ref: CardRef, binding: ViewBinding, decisions: list[Decision]) -> None:
        pending, record = await self.card_of(ref, _click_of(binding))
        await self.approve(ref, pending, record, decisions, binding.user)

    async def veto(self, ref: CardRef, binding: ViewBinding, reason: str, *, replan: bool = False) -> None:
        """A rejection: one is enough, whatever the card's number of required approvals. It ends the run unless
        the approver let the agent try another way (``replan``)."""
        pending, record = await self.card_of(ref, _click_of(binding))
        await self._approvers.check_reject(binding.user, record.requester or None, pending.request)
        decisions: list[Decision] = [{"type": "reject", "message": reason} for _ in pending.request["action_requests"]]
        await self.resume(ref, decisions, binding.user, end=not replan)


def _click_of(binding: ViewBinding) -> Click:
    """The click that opened a dialog, as its binding recorded it."""
    return Click(binding.user, binding.channel, binding.card_ts, binding.thread_ts or None)
