"""The public vocabulary the rest of the code speaks: review requests, decisions and run events.

The review payload follows LangChain's HumanInTheLoopMiddleware schema (``action_requests`` +
``review_configs`` in, ``{"decisions": [...]}`` out) so other LangChain tooling can read our interrupts.
We add ``tool_call_id`` to each action request and ``args_schema`` to each review config, which the
middleware schema leaves open, so a UI can key checkboxes and build typed edit forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

ToolMode = Literal["auto", "ask", "deny"]
DecisionType = Literal["approve", "edit", "reject"]
# How a task ended, in the user's terms: done (something ran and the model answered), nothing (no tool was
# called: nothing matched), failed (a tool or the model failed), rejected (every call was rejected or not allowed,
# so nothing ran), stopped (a limit ended it), cancelled, expired.
Outcome = Literal["done", "nothing", "failed", "rejected", "stopped", "cancelled", "expired"]
RunStatus = Literal[
    "idle", "running", "waiting", "done", "nothing", "failed", "rejected", "stopped", "cancelled", "expired"
]


class ActionRequest(TypedDict):
    name: str
    args: dict[str, Any]
    description: str
    tool_call_id: str
    facts: NotRequired[list[str]]  # what the tool's own check found, for the reviewer (e.g. a resolved address)


class ReviewConfig(TypedDict):
    action_name: str
    allowed_decisions: list[DecisionType]
    args_schema: NotRequired[dict[str, Any]]


class ReviewRequest(TypedDict):
    """The value of the review interrupt: every proposed call that policy says needs a human."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    error: NotRequired[str]  # set when a previous answer to this same review was refused


class Action(TypedDict):
    name: str
    args: dict[str, Any]


class Decision(TypedDict):
    type: DecisionType
    edited_action: NotRequired[Action]  # for "edit"
    message: NotRequired[str]  # for "reject": what the model is told


class ReviewResponse(TypedDict):
    decisions: list[Decision]
    decided_by: NotRequired[str]
    # True with every call rejected: end the task there (outcome "rejected") instead of letting the model re-plan.
    end: NotRequired[bool]


MODE_ORDER: dict[ToolMode, int] = {"auto": 0, "ask": 1, "deny": 2}


def strictest(*modes: ToolMode) -> ToolMode:
    """The most restrictive of several modes: a tool's own check can tighten policy, never loosen it."""
    return max(modes, key=MODE_ORDER.__getitem__)


@dataclass(frozen=True)
class Assessment:
    """What a tool's own check says about one proposed call before anyone reviews it.

    Policy gives a tool a mode; an assessment can only make a call stricter (an allowlisted URL may run
    unreviewed, a public one needs a person, an internal one must not run at all).
    """

    mode: ToolMode  # auto: may run unreviewed; ask: needs a person; deny: must not run
    facts: tuple[str, ...] = ()  # what a reviewer must see to know what will happen
    reason: str = ""  # for deny: why, in words the model and the people in the thread read
    field: str = ""  # for deny: the argument at fault, so an edit dialog can show the error beside it

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "facts": list(self.facts), "reason": self.reason, "field": self.field}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Assessment:
        return cls(data["mode"], tuple(data.get("facts") or ()), data.get("reason") or "", data.get("field") or "")


def approve() -> Decision:
    return {"type": "approve"}


def edit(name: str, args: dict[str, Any]) -> Decision:
    return {"type": "edit", "edited_action": {"name": name, "args": args}}


def reject(message: str = "") -> Decision:
    return {"type": "reject", "message": message} if message else {"type": "reject"}


# --- run events -------------------------------------------------------------------------------
# What a run reports while it works. The Slack layer turns these into message edits.


@dataclass(frozen=True)
class RunEvent:
    thread_id: str


@dataclass(frozen=True)
class Token(RunEvent):
    text: str


@dataclass(frozen=True)
class ToolProposed(RunEvent):
    """The model proposed calls; ``mode`` says per call what policy decided (auto/ask/deny, invalid, or repeat: the
    same call already ran in this task). ``said``: the model's words, when they are not what streamed (its calls
    were read out of its text)."""

    calls: list[dict[str, Any]]
    said: str | None = None


@dataclass(frozen=True)
class ToolStarted(RunEvent):
    tool_call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolFinished(RunEvent):
    tool_call_id: str
    name: str
    ok: bool
    output: str
    duration_s: float


@dataclass(frozen=True)
class ReviewRequested(RunEvent):
    interrupt_id: str
    request: ReviewRequest


@dataclass(frozen=True)
class ReviewDecided(RunEvent):
    """A human's answer was accepted (checked, and the review still pending); the run goes on now."""

    interrupt_id: str
    request: ReviewRequest
    decisions: list[Decision]
    decided_by: str | None


@dataclass(frozen=True)
class Finished(RunEvent):
    report: str  # the model's last answer ("" when the task ended without asking it)
    outcome: Outcome = "done"
    detail: str = ""  # what decided the outcome, e.g. which calls failed, or why nothing ran


@dataclass(frozen=True)
class Failed(RunEvent):
    error: str


@dataclass(frozen=True)
class Cancelled(RunEvent):
    by: str | None = None


@dataclass(frozen=True)
class PendingReview:
    thread_id: str
    interrupt_id: str
    request: ReviewRequest
    task: str = ""
    requester: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class RunResult:
    """Where a run stands after start/resume/rewind returned."""

    thread_id: str
    status: RunStatus
    report: str = ""
    error: str = ""
    pending: PendingReview | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    checkpoint_id: str
    step: int
    next: tuple[str, ...]
    created_at: str
    summary: str  # one line, in the user's words: where the run stood and what happened just before
    parent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    decided_by: tuple[str, ...] = ()  # who decided the review this checkpoint records (user IDs), if any
    stage: str = ""  # what comes next, in words: "waiting for approval", "running the approved calls", "ended"…
