"""The progress message of a run: its state, folded from run events, and its rendering (pure)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from graphs.display import visible
from graphs.textcalls import prose_before_calls
from graphs.tools import summarize_args
from graphs.types import (
    Cancelled,
    Failed,
    Finished,
    ReviewRequested,
    RunEvent,
    Token,
    ToolFinished,
    ToolProposed,
    ToolStarted,
)

from .blocks import (
    SECTION_TEXT,
    Block,
    clip,
    context,
    literal,
    rich_text,
    rt_section,
    rt_text,
    rt_user,
    section,
)

MODEL_TEXT_SHOWN = 1500
USER_ID = re.compile(r"[UW][A-Z0-9]+")

# One word and one mark per state, the same wherever a state is shown (steps use the Unicode of the same marks).
STATUS_LINE = {
    "working": ":hourglass_flowing_sand: Working… (anything that needs approval gets an approval card first)",
    "queued": ":hourglass: Queued: it starts when a worker is free",
    "waiting": ":raised_hand: Waiting for approval (see the card below)",
    "undelivered": ":raised_hand: Waiting for approval: the card was not delivered yet — retrying",
    "done": ":white_check_mark: Done",
    "nothing": ":information_source: Nothing to do: no tool matched this request",
    "failed": ":x: Failed",
    "rejected": ":no_entry: Nothing ran: every call was rejected or not allowed",
    "stopped": ":octagonal_sign: Stopped",
    "cancelled": ":no_entry_sign: Cancelled",
    "expired": ":alarm_clock: Expired: nobody decided in time",
}
FINAL = frozenset({"done", "nothing", "failed", "rejected", "stopped", "cancelled", "expired"})

# Unicode, not :codes:: step lines are rich_text (literal), where :codes: are not turned into emoji.
STEP_MARK = {
    "queued": "🔹",
    "needs approval": "✋",
    "approved": "☑️",
    "running": "🔄",
    "ok": "✅",
    "failed": "❌",
    "rejected": "⛔",
    "not allowed": "⛔",
    "invalid arguments": "⛔",
    "not run": "⏹️",
    "stopped": "⏹️",
    "already done": "🔁",
}
# What a step still waiting becomes when its run ends without it.
UNFINISHED = {"queued": "not run", "needs approval": "not run", "approved": "not run", "running": "stopped"}
PROPOSED_STATUS = {"auto": "queued", "ask": "needs approval", "invalid": "invalid arguments", "repeat": "already done"}


@dataclass
class Step:
    tool_call_id: str
    name: str
    args: str
    status: str
    detail: str = ""  # tool output's first line, or why a call may not run
    by: str = ""  # who approved or rejected it: user IDs, comma separated


@dataclass
class Progress:
    run_id: str
    requester: str | None
    task: str
    status: str = "working"
    model_text: str = ""  # what is shown of the model's words: never a tool call it is writing as text
    model_text_closed: bool = False  # the model proposed calls after model_text: its next words replace it
    model_raw: str = ""  # the model's words of its latest step as they streamed
    steps: list[Step] = field(default_factory=list)
    report: str = ""
    error: str = ""  # why it failed or stopped, or what the bot can do when nothing matched
    note: str = ""  # e.g. "rewound by @admin"
    card_undelivered: bool = False  # waiting, but the approval card has not reached Slack yet
    ahead: int = 0  # while queued: how many runs were waiting ahead of this one when it was asked
    card_link: str = ""  # our own mrkdwn: where the card is when it is not in this thread (a review channel)

    # -- folding events -----------------------------------------------------------------------

    def apply(self, event: RunEvent) -> bool:
        """Fold one event in; True when the change is worth showing."""
        if isinstance(event, Token):
            self.status = "working"
            # The model's words of its latest step only: what it said before proposing the calls listed below
            # is replaced when it speaks again, rather than stacking up.
            self.model_raw = event.text if self.model_text_closed else self.model_raw + event.text
            self.model_text = prose_before_calls(self.model_raw)
            self.model_text_closed = False
            return True
        if isinstance(event, ToolProposed):
            if event.said is not None:
                self.model_text = event.said
            self.model_text_closed = True
            for call in event.calls:
                status = PROPOSED_STATUS.get(call["mode"], "not allowed")
                self._set(
                    call["id"],
                    call["name"],
                    call["args"],
                    status,
                    call.get("why", "") if status not in ("queued", "needs approval") else "",
                )
            return True
        if isinstance(event, ToolStarted):
            self.status = "working"
            self._set(event.tool_call_id, event.name, event.args, "running")
            return True
        if isinstance(event, ToolFinished):
            first = event.output.strip().splitlines()[0] if event.output.strip() else ""
            first = first.removeprefix(f"{event.name} failed: ")  # the step says "failed" already
            detail = f"{clip(first, 200)} ({event.duration_s:.1f}s)"
            self._set(event.tool_call_id, event.name, None, "ok" if event.ok else "failed", detail)
            return True
        if isinstance(event, ReviewRequested):
            self.status = "waiting"
            return True
        if isinstance(event, Finished):
            self.end(event.outcome, error=event.detail)
            self.report = event.report
            return True
        if isinstance(event, Failed):
            self.end("failed", error=event.error)
            return True
        if isinstance(event, Cancelled):
            self.end("cancelled", note=f"cancelled by <@{event.by}>" if event.by else "")
            return True
        return False

    def end(self, status: str, *, error: str = "", note: str = "") -> None:
        """The run ended (``status`` is one of FINAL): steps still waiting say they did not run."""
        self.status = status
        self.error = error or self.error
        self.note = note or self.note
        for step in self.steps:
            step.status = UNFINISHED.get(step.status, step.status)

    def decided(self, calls: list[tuple[str, str, str]], by: str) -> None:
        """Mark reviewed calls (tool_call_id, decision, reason) once someone decided."""
        for tool_call_id, decision, reason in calls:
            rejected = decision == "reject"
            self._set(tool_call_id, None, None, "rejected" if rejected else "approved", reason if rejected else "", by)
        self.status = "working"
        self.card_undelivered = False
        self.card_link = ""

    def _set(
        self,
        tool_call_id: str,
        name: str | None,
        args: dict[str, Any] | None,
        status: str,
        detail: str = "",
        by: str = "",
    ) -> None:
        for step in self.steps:
            if step.tool_call_id == tool_call_id:
                step.status = status
                step.detail = detail or step.detail
                step.by = by or step.by
                if args is not None:
                    step.args = summarize_args(args, 120)
                return
        self.steps.append(Step(tool_call_id, name or "?", summarize_args(args or {}, 120), status, detail, by))

    @property
    def final(self) -> bool:
        return self.status in FINAL

    # -- persistence (so a resume in another process continues the same message) ---------------

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Progress:
        data = json.loads(raw)
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        return cls(**data)

    # -- rendering ------------------------------------------------------------------------------

    def render(self) -> tuple[str, list[Block]]:
        state = "undelivered" if self.status == "waiting" and self.card_undelivered else self.status
        status = STATUS_LINE.get(state, self.status)
        if state == "queued" and self.ahead:
            status = f":hourglass: Queued ({self.ahead} ahead): it starts when a worker is free"
        if state == "waiting" and self.card_link:
            status = f":raised_hand: Waiting for approval: {self.card_link}"
        blocks: list[Block] = [section(f"{status}")]
        text = self.model_text.strip()
        if text and not self.final:
            shown = text if len(text) <= MODEL_TEXT_SHOWN else "…" + text[-MODEL_TEXT_SHOWN:]
            blocks.append(section(literal(shown)))  # the model's words: formatting kept, mentions and links inert
        if self.steps:
            blocks.append(rich_text(*(self._step_line(s) for s in self.steps)))
        if self.final and self.report:
            blocks.append(section(literal(clip(self.report, SECTION_TEXT - 100))))
        if self.error and self.status in ("failed", "stopped"):
            blocks.append(
                section(f"*{'Why' if self.status == 'stopped' else 'What failed'}:* {literal(clip(self.error, 1500))}")
            )
        if self.error and self.status == "nothing":
            blocks.append(context(literal(clip(self.error, 1500))))  # what the bot can do instead
        footer = f"Run `{self.run_id}`" + (f" · asked by <@{self.requester}>" if self.requester else "")
        if self.note:
            footer += f" · {self.note}"  # our own words
        blocks.append(context(footer))
        fallback = f"{status} — run {self.run_id}"
        if self.final and self.report:
            fallback += f": {literal(clip(self.report, 3000))}"
        return fallback, blocks

    @staticmethod
    def _step_line(step: Step) -> Block:
        """One tool call as data: the mark, the tool, its arguments and what came of it; nothing in it is mrkdwn."""
        parts = [
            rt_text(f"{STEP_MARK.get(step.status, '•')} "),
            rt_text(step.name, code=True),
            rt_text(f" {step.args} — {step.status}"),
        ]
        if step.detail and step.status in ("ok", "failed", "not allowed", "invalid arguments"):
            parts.append(rt_text(f": {visible(step.detail)}"))
        if step.by and step.status in ("approved", "rejected"):
            parts.append(rt_text(" by "))
            for n, user in enumerate(u for u in step.by.split(",") if u):
                parts += [rt_text(", ")] * (n > 0) + [
                    rt_user(user) if USER_ID.fullmatch(user) else rt_text(visible(user))
                ]
        if step.detail and step.status == "rejected":
            parts.append(rt_text(f" ({visible(step.detail)})"))
        return rt_section(*parts)
