"""The progress message of a run: its state, folded from run events, and its rendering (pure)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

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

from .blocks import Block, clip, context, escape, section

MODEL_TEXT_SHOWN = 1500

STATUS_LINE = {
    "working": ":hourglass_flowing_sand: Working…",
    "waiting": ":raised_hand: Waiting for approval (see the card below)",
    "done": ":white_check_mark: Done",
    "failed": ":warning: Failed",
    "cancelled": ":no_entry_sign: Cancelled",
    "expired": ":alarm_clock: Expired: nobody decided in time",
}

STEP_MARK = {
    "queued": ":small_blue_diamond:",
    "needs approval": ":raised_hand:",
    "approved": ":ballot_box_with_check:",
    "running": ":arrows_counterclockwise:",
    "ok": ":white_check_mark:",
    "failed": ":x:",
    "rejected": ":no_entry:",
    "denied by policy": ":no_entry:",
}


@dataclass
class Step:
    tool_call_id: str
    name: str
    args: str
    status: str
    detail: str = ""


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
                status = {"auto": "queued", "ask": "needs approval"}.get(call["mode"], "denied by policy")
                self._set(call["id"], call["name"], call["args"], status)
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
            self._set(tool_call_id, None, None, "rejected" if decision == "reject" else "approved", f"by <@{by}>")
        self.status = "working"

    def _set(self, tool_call_id: str, name: str | None, args: dict[str, Any] | None, status: str, detail: str = "") -> None:
        for step in self.steps:
            if step.tool_call_id == tool_call_id:
                step.status = status
                step.detail = detail or step.detail
                if args is not None:
                    step.args = summarize_args(args, 120)
                return
        self.steps.append(Step(tool_call_id, name or "?", summarize_args(args or {}, 120), status, detail))

    @property
    def final(self) -> bool:
        return self.status in ("done", "failed", "cancelled", "expired")

    # -- persistence (so a resume in another process continues the same message) ---------------

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> "Progress":
        data = json.loads(raw)
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        return cls(**data)

    # -- rendering ------------------------------------------------------------------------------

    def render(self) -> tuple[str, list[Block]]:
        status = STATUS_LINE.get(self.status, self.status)
        blocks: list[Block] = [section(f"{status}")]
        text = self.model_text.strip()
        if text and self.status != "done":
            shown = text if len(text) <= MODEL_TEXT_SHOWN else "…" + text[-MODEL_TEXT_SHOWN:]
            blocks.append(section(escape(shown)))
        if self.steps:
            lines = [
                f"{STEP_MARK.get(s.status, '•')} `{s.name}` {escape(s.args)} — {s.status}"
                + (f": {escape(s.detail)}" if s.detail and s.status in ("ok", "failed") else "")
                + (f" {s.detail}" if s.detail and s.status in ("approved", "rejected") else "")
                for s in self.steps
            ]
            blocks.append(section("\n".join(lines)))
        if self.status == "done" and self.report:
            blocks.append(section(escape(self.report)))
        if self.status == "failed" and self.error:
            blocks.append(section(f"*Error:* {escape(clip(self.error, 1500))}"))
        footer = f"Run `{self.run_id}`" + (f" · asked by <@{self.requester}>" if self.requester else "")
        if self.note:
            footer += f" · {self.note}"
        blocks.append(context(footer))
        fallback = f"{status} — run {self.run_id}"
        if self.status == "done" and self.report:
            fallback += f": {clip(self.report, 3000)}"
        return fallback, blocks
