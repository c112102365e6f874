"""What a thread's checkpoints say in words: a one-line summary of each, and the calls one left unanswered."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.types import StateSnapshot

from .agent import last_ai_message, message_text
from .tools import summarize_args
from .types import CheckpointInfo

# What the graph does next at a checkpoint, in the words of someone who never saw the graph.
STAGES = {
    "__start__": "starting",
    "planner": "asking the model",
    "review": "reviewing the proposed calls",
    "execute": "running the allowed calls",
    "report": "writing the answer",
}


def describe(snapshot: StateSnapshot) -> CheckpointInfo:
    """The checkpoint as a history line: where the run stood there and what happened just before, in one line."""
    values = snapshot.values or {}
    messages = values.get("messages", [])
    metadata: dict[str, Any] = dict(snapshot.metadata or {})
    step = int(metadata.get("step", -1))
    nxt = tuple(snapshot.next)
    ai = last_ai_message(messages)
    results = [m for m in messages[messages.index(ai) + 1 :] if isinstance(m, ToolMessage)] if ai else []
    last_review = values.get("reviews", [])[-1:] or [None]
    rejected = {c["tool_call_id"] for c in (last_review[0] or {}).get("calls", []) if c["decision"] == "reject"}
    ran = ", ".join(
        f"{m.name} {'rejected' if m.tool_call_id in rejected else 'failed' if m.status == 'error' else 'ok'}"
        for m in results
    )
    decided_by: tuple[str, ...] = ()
    if metadata.get("source") == "input" or not messages:
        summary = "task received"
    elif nxt == ("review",) and ai is not None:
        if results:
            waiting = [c["name"] for c in ai.tool_calls if c["id"] not in {m.tool_call_id for m in results}]
            summary = f"read-only calls finished ({ran}); still to review: {', '.join(waiting)}"
        else:
            proposed = ", ".join(f"{c['name']}({summarize_args(c['args'], 60)})" for c in ai.tool_calls)
            summary = f"the model proposed {proposed}"
    elif (
        nxt in (("execute",), ("planner",), ("report",))
        and last_review[0]
        and _just_reviewed(messages, ai, last_review[0])
    ):
        summary, decided_by = "decided: " + _decisions_line(last_review[0]), _people(last_review[0])
    elif nxt == ("planner",) and isinstance(messages[-1], HumanMessage):
        summary = f"task: {message_text(messages[-1])}"
    elif nxt == ("planner",):
        summary = f"calls finished: {ran}" if ran else "back to the model"
    elif nxt == ("report",) and ai is not None:
        summary = f"the model answered: {message_text(ai)}"
    elif not nxt:
        outcome = values.get("outcome") or "done"
        detail = values.get("report") or values.get("detail") or ""
        summary = f"ended, {outcome}" + (f": {detail}" if detail else "")
    else:
        summary = "next: " + ", ".join(STAGES.get(n, n) for n in nxt)
    if nxt == ("review",) and snapshot.interrupts:
        stage = "waiting for approval"
    elif not nxt:
        stage = "ended"
    else:
        stage = ", ".join(STAGES.get(n, n) for n in nxt)
    parent = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=step,
        next=nxt,
        created_at=snapshot.created_at or "",
        summary=" ".join(summary.split()),  # one line: a task or an answer of several lines stays one bullet
        parent_id=parent,
        metadata={"source": metadata.get("source", "")},
        decided_by=decided_by,
        stage=stage,
    )


def _just_reviewed(messages: list[Any], ai: Any, review: dict[str, Any] | None) -> bool:
    """Whether the last thing that happened is ``review``: it reviewed the last model message's calls, and none of
    the calls it allowed has run yet."""
    if (
        ai is None
        or review is None
        or not {c["id"] for c in ai.tool_calls} & {c["tool_call_id"] for c in review["calls"]}
    ):
        return False
    allowed = {c["tool_call_id"] for c in review["calls"] if c["decision"] != "reject"}
    after = messages[messages.index(ai) + 1 :]
    return not any(isinstance(m, ToolMessage) and m.tool_call_id in allowed for m in after)


def _people(review: dict[str, Any]) -> tuple[str, ...]:
    if not any(c["mode"] == "ask" for c in review["calls"]):
        return ()
    return tuple(p for p in str(review.get("decided_by") or "").split(",") if p)


def close_open_calls(snapshot: StateSnapshot, reason: str) -> list[ToolMessage]:
    """Tool results for the calls of the checkpoint's last proposal that never ran, each saying ``reason``, so a
    later turn's model request stays well-formed."""
    messages = snapshot.values.get("messages", [])
    ai = last_ai_message(messages)
    if ai is None:
        return []
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [
        ToolMessage(reason, tool_call_id=c["id"], name=c["name"], status="error")
        for c in ai.tool_calls
        if c["id"] not in answered
    ]


def _decisions_line(review: dict[str, Any]) -> str:
    words = {"approve": "approved", "edit": "edited and approved", "reject": "rejected"}
    return ", ".join(f"{call['name']} {words.get(call['decision'], call['decision'])}" for call in review["calls"])
