"""The progress message of a run: its state, folded from run events, and its rendering (pure)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from graphs.display import visible
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

STATUS_LINE = {
    "working": ":hourglass_flowing_sand: Working…",
    "waiting": ":raised_hand: Waiting for approval (see the card below)",
    "undelivered": ":raised_hand: Waiting for approval: the card was not delivered yet — retrying",
    "done": ":white_check_mark: Done",
    "failed": ":warning: Failed",
    "cancelled": ":no_entry_sign: Cancelled",
    "expired": ":alarm_clock: Expired: nobody decided in time",
}

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
}
PROPOSED_STATUS = {"auto": "queued", "ask": "needs approval", "invalid": "invalid arguments"}


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
    model_text: str = ""
    steps: list[Step] = field(default_factory=list)
    report: str = ""
    error: str = ""
    note: str = ""  # e.g. "rewound by @admin"
    card_undelivered: bool = False  # waiting, but the approval card has not reached Slack yet

    # -- folding events -----------------------------------------------------------------------

    def apply(self, event: RunEvent) -> bool:
        """Fold one event in; True when the change is worth showing."""
        if isinstance(event, Token):
            self.status = "working"
            self.model_text += event.text
            return True
        if isinstance(event, ToolProposed):
            self.model_text += "\n" if self.model_text and not self.model_text.endswith("\n") else ""
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
            detail = f"{clip(first, 200)} ({event.duration_s:.1f}s)"
            self._set(event.tool_call_id, event.name, None, "ok" if event.ok else "failed", detail)
            return True
        if isinstance(event, ReviewRequested):
            self.status = "waiting"
            return True
        if isinstance(event, Finished):
            self.status, self.report = "done", event.report
            return True
        if isinstance(event, Failed):
            self.status, self.error = "failed", event.error
            return True
        if isinstance(event, Cancelled):
            self.status = "cancelled"
            if event.by:
                self.note = f"cancelled by <@{event.by}>"
            return True
        return False

    def decided(self, calls: list[tuple[str, str]], by: str) -> None:
        """Mark reviewed calls (tool_call_id, decision) once someone decided."""
        for tool_call_id, decision in calls:
            self._set(tool_call_id, None, None, "rejected" if decision == "reject" else "approved", by=by)
        self.status = "working"
        self.card_undelivered = False

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
        return self.status in ("done", "failed", "cancelled", "expired")

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
        blocks: list[Block] = [section(f"{status}")]
        text = self.model_text.strip()
        if text and self.status != "done":
            shown = text if len(text) <= MODEL_TEXT_SHOWN else "…" + text[-MODEL_TEXT_SHOWN:]
            blocks.append(section(literal(shown)))  # the model's words: formatting kept, mentions and links inert
        if self.steps:
            blocks.append(rich_text(*(self._step_line(s) for s in self.steps)))
        if self.status == "done" and self.report:
            blocks.append(section(literal(self.report)))
        if self.status == "failed" and self.error:
            blocks.append(section(f"*Error:* {literal(clip(self.error, 1500))}"))
        footer = f"Run `{self.run_id}`" + (f" · asked by <@{self.requester}>" if self.requester else "")
        if self.note:
            footer += f" · {self.note}"  # our own words
        blocks.append(context(footer))
        fallback = f"{status} — run {self.run_id}"
        if self.status == "done" and self.report:
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
        return rt_section(*parts)
