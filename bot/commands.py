"""/chatops: help, run, and the admin controls (pending, history, rewind, cancel, audit).

Every answer is acked at once when it is ready at once; one that takes longer than ``ACK_WAIT_S`` (a long
history, a slow Slack) is acked with ``FOLLOWS`` and sent through the command's response_url when ready (see
the /chatops listener in bot.app). ``pending`` reads only what it shows: the listing's scores, one pipeline
for the records it shows (and, for a channel's or a DM's view, one for whose runs they are), the card links
noted when the cards were posted, and an existence check of the cards shown, at most ``LISTED``, concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from graphs.errors import ChatOpsError, UnknownCheckpoint, UnknownRun
from graphs.runs import Runs
from graphs.types import PendingReview

from .approvers import Directory
from .audit import AuditLog
from .blocks import clip, escape, literal
from .errors import BadCommand, Refused
from .lifecycle import Lifecycle
from .slack_io import SlackIO
from .store import RunRecord, SlackStore

log = logging.getLogger(__name__)

USAGE = """*ChatOps* — ask me in a channel (`@chatops check the API and run the disk-usage runbook`), in a DM, or:
• `/chatops run <task>` — start a task here; I answer in a thread
• `/chatops pending` — approval cards waiting for a decision
• `/chatops history <run>` — a run's checkpoints, newest first _(admins)_
• `/chatops rewind <run> [<checkpoint>]` — fork a run from a checkpoint, default its last approval point _(admins)_
• `/chatops cancel <run>` — stop a running or paused run _(admins)_
• `/chatops audit [<run>]` — the decision log, recent first _(admins)_
`<run>` is the run id shown on the bot's messages, or a link to the thread."""

SUBCOMMAND_USAGE = {
    "run": "`/chatops run <task>` — e.g. `/chatops run check the API health`",
    "history": "`/chatops history <run>` — <run> is a run id like `k3j9x2ab` or a link to the thread",
    "rewind": "`/chatops rewind <run> [<checkpoint>]` — checkpoint ids are listed by `/chatops history <run>`",
    "cancel": "`/chatops cancel <run>`",
    "audit": "`/chatops audit [<run>]`",
}
ADMIN_ONLY = {"history", "rewind", "cancel", "audit"}
LINK = re.compile(
    r"/archives/(?P<channel>[CDG][A-Z0-9]+)/p(?P<sec>\d{10})(?P<usec>\d{6})(?:\S*?thread_ts=(?P<thread>\d+\.\d+))?"
)
RUN_ID = re.compile(r"^[a-z0-9]{8}$")
LISTED = 20
LISTED_CHECKPOINTS = 40
USER = re.compile(r"[UW][A-Z0-9]+")
# Slack wants an ack within 3 s: an answer not ready by then is acked with FOLLOWS and sent when it is.
ACK_WAIT_S = 1.2
FOLLOWS = "Looking that up… the answer follows here in a moment."


class Commands:
    def __init__(
        self,
        runs: Runs,
        store: SlackStore,
        lifecycle: Lifecycle,
        audit: AuditLog,
        io: SlackIO,
        directory: Directory,
        admins: frozenset[str],
    ) -> None:
        self._runs = runs
        self._store = store
        self._lifecycle = lifecycle
        self._audit = audit
        self._io = io
        self._directory = directory
        self._admins = admins

    async def handle(self, command: dict[str, Any]) -> tuple[str, Any]:
        """What to answer the caller (ephemeral text), and optional work to spawn after the ack."""
        text = (command.get("text") or "").strip()
        verb, _, rest = text.partition(" ")
        verb, rest, user = verb.lower(), rest.strip(), command["user_id"]
        if verb in ("", "help"):
            return USAGE, None
        if verb not in SUBCOMMAND_USAGE and verb != "pending":
            return f"I don't know `/chatops {escape(verb)}`.\n{USAGE}", None
        if verb in ADMIN_ONLY and not (self._admins and await self._directory.member_of(user, self._admins)):
            return f"`/chatops {verb}` is for admins (CHATOPS_ADMINS); nothing was changed.", None
        try:
            if verb == "run":
                if not rest:
                    return f"Usage: {SUBCOMMAND_USAGE['run']}", None
                return "", self._lifecycle.ask_from_command(channel=command["channel_id"], user=user, task=rest)
            if verb == "pending":
                return await self.pending(user, command["channel_id"]), None
            args = rest.split()
            if verb == "audit":
                run_id = await self.run_id(args[0]) if args else None
                return await self.audit(run_id), None
            if not args or (verb != "rewind" and len(args) > 1) or len(args) > 2:
                return f"Usage: {SUBCOMMAND_USAGE[verb]}", None
            run_id = await self.run_id(args[0])
            if verb == "history":
                return await self.history(run_id), None
            if verb == "cancel":
                return await self.cancel(run_id, user)
            return await self.rewind(run_id, args[1] if len(args) > 1 else None, user)
        except (UnknownRun, UnknownCheckpoint, Refused) as exc:
            return str(exc), None
        except ChatOpsError as exc:
            return f"Could not {verb}: {exc}", None

    async def run_id(self, ref: str) -> str:
        """A run id, or a link to a thread the bot answered in."""
        ref = ref.strip("<>").split("|")[0]
        if RUN_ID.match(ref):
            if not await self._store.run(ref):
                raise UnknownRun(f"I know no run `{ref}`; run ids are on the bot's messages in the thread.")
            return ref
        link = LINK.search(ref)
        if not link:
            raise BadCommand(
                f"`{escape(ref[:100])}` is neither a run id (8 letters/digits) nor a link to a Slack thread."
            )
        thread = link.group("thread") or f"{link.group('sec')}.{link.group('usec')}"
        run_id = await self._store.run_for_thread(link.group("channel"), thread)
        if not run_id:
            raise UnknownRun("That thread has no run of mine.")
        return run_id

    async def pending(self, user: str, channel: str) -> str:
        """Open approval cards the caller may see: admins all of them; anyone else those of this channel, or in
        a DM with the bot the runs they asked for (a private channel's or another DM's runs stay private)."""
        admin = bool(self._admins) and await self._directory.member_of(user, self._admins)
        in_dm = channel.startswith("D")
        if admin:
            total, listed = await self._store.pending_page(LISTED)
            candidates = [run_id for run_id, _ in listed]
        else:
            _, listed = await self._store.pending_page()
            owners = await self._store.run_fields(
                [run_id for run_id, _ in listed], "channel", "card_channel", "requester"
            )
            candidates = [
                run_id
                for (run_id, _), f in zip(listed, owners, strict=True)
                if (f["requester"] == user if in_dm else channel in (f["channel"], f["card_channel"]))
            ]
            total = len(candidates)
        shown: list[tuple[PendingReview, RunRecord]] = []
        for run_id, (record, review) in zip(
            candidates[:LISTED], await self._store.pending_details(candidates[:LISTED]), strict=True
        ):
            if review is None:
                total -= 1  # listed, but the run expired: the index drops it at its next listing
                continue
            shown.append((review, record or RunRecord(run_id)))
        scope = "" if admin else (" for runs you asked for" if in_dm else " in this channel")
        if not shown:
            return f"No approval cards are waiting{scope}."
        found = await self._check_cards(shown)
        lines = [f"*{total} approval card{'s' if total != 1 else ''} waiting{scope}* (oldest first):"]
        for review, record in shown:
            tools = ", ".join(a["name"] for a in review.request["action_requests"])
            card = record.card(review.interrupt_id)
            link, gone = found.get(card, (None, False)) if card else (None, False)
            link, gone = link or record.card_link or None, gone or record.card_is_gone
            who = f"<@{review.requester}>" if review.requester else "someone"
            if gone and card:
                where = (
                    " — its card is gone from Slack (deleted, or the workspace was reset), so nobody can decide it;"
                    f" an admin can `/chatops cancel {review.thread_id}`"
                )
            elif link and card:
                where = f" — <{link}|open the card>"
            else:
                where = " — card not delivered yet — retrying" if card is None else ""
            lines.append(
                f"• run `{review.thread_id}` by {who}: {literal(tools)} — waiting {_age(review.created_at)}{where}"
            )
        if total > len(shown):
            lines.append(f"…and {total - len(shown)} more.")
        return "\n".join(lines)

    async def _check_cards(
        self, shown: list[tuple[PendingReview, RunRecord]]
    ) -> dict[tuple[str, str], tuple[str | None, bool]]:
        """Whether the cards shown are still on Slack (a Slack that was reset forgot them; Redis did not), all at
        once with a bound, and what is learnt noted in their run records: a card found gone is not checked again,
        a link missing (the card was noted from a click) is kept."""
        cards = {
            card: record
            for review, record in shown
            if (card := record.card(review.interrupt_id)) is not None and not record.card_is_gone
        }
        found = await self._io.locate_all(cards)
        notes = []
        for card, (link, gone) in found.items():
            record = cards[card]
            if gone:
                notes.append(self._store.update(record.run_id, card_gone=card[1]))
            elif link and not record.card_link:
                notes.append(self._store.update(record.run_id, card_link=link))
        if notes:
            await asyncio.gather(*notes)
        return found

    async def history(self, run_id: str) -> str:
        checkpoints = await self._runs.history(run_id)
        if not checkpoints:
            raise UnknownRun(f"run `{run_id}` has no history (it may have expired)")
        lines = [f"*History of run* `{run_id}` (newest first; rewind to a point with `/chatops rewind {run_id} <id>`):"]
        for c in checkpoints[:LISTED_CHECKPOINTS]:
            when = c.created_at[11:19] if len(c.created_at) >= 19 else c.created_at
            who = f" — by {', '.join(f'<@{u}>' for u in c.decided_by if USER.fullmatch(u))}" if c.decided_by else ""
            lines.append(f"• `{c.checkpoint_id[-8:]}` {when} UTC · _{c.stage}_ · {literal(clip(c.summary, 200))}{who}")
        if len(checkpoints) > LISTED_CHECKPOINTS:
            lines.append(f"…and {len(checkpoints) - LISTED_CHECKPOINTS} older checkpoints.")
        return "\n".join(lines)

    async def cancel(self, run_id: str, user: str) -> tuple[str, Any]:
        info = await self._runs.info(run_id)
        if info.get("status") in ("done", "cancelled", "expired", "failed") and not await self._runs.pending_review(
            run_id
        ):
            return f"Run `{run_id}` is already {info.get('status')}; nothing to cancel.", None
        return f"Cancelling run `{run_id}`…", self._lifecycle.cancel(run_id, user)

    async def rewind(self, run_id: str, checkpoint: str | None, user: str) -> tuple[str, Any]:
        if await self._runs.locks.is_held(run_id):
            return f"Run `{run_id}` is working right now; cancel it or wait before rewinding.", None
        record = await self._store.run(run_id) or RunRecord(run_id)
        if (await self._io.locate(record.channel, record.thread_ts))[1]:
            # A rewind answers in the run's thread; with the thread gone its new card would reach nobody.
            return (
                f"Run `{run_id}` cannot be rewound: its thread is gone from Slack (deleted, or the workspace was "
                f"reset), so nothing it posts could be seen. Cancel it with `/chatops cancel {run_id}`.",
                None,
            )
        target = await self._runs.rewind_target(run_id, checkpoint)
        return (
            f"Rewinding run `{run_id}` to `{target.checkpoint_id[-8:]}`…",
            self._lifecycle.rewind(run_id, target.checkpoint_id, user),
        )

    async def audit(self, run_id: str | None) -> str:
        entries = await self._audit.recent(run_id, count=LISTED)
        scope = f"run `{run_id}`" if run_id else "all runs"
        if not entries:
            return f"The audit log has nothing for {scope} yet."
        return "\n".join([f"*Audit log, {scope}* (recent first):", *(f"• {e.line()}" for e in entries)])


def _age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"
