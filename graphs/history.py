"""What a thread's checkpoints say in words: a one-line summary of each, and the calls one left unanswered."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.types import StateSnapshot

from .agent import last_ai_message, message_text
from .tools import summarize_args
from .types import CheckpointInfo


def describe(snapshot: StateSnapshot) -> CheckpointInfo:
    """The checkpoint as a history line: where the run stood there and what happened just before."""
    values = snapshot.values or {}
    messages = values.get("messages", [])
    metadata: dict[str, Any] = dict(snapshot.metadata or {})
    step = int(metadata.get("step", -1))
    nxt = tuple(snapshot.next)
    ai = last_ai_message(messages)
    results = [m for m in messages[messages.index(ai) + 1 :] if isinstance(m, ToolMessage)] if ai else []
    ran = ", ".join(f"{m.name} {'failed' if m.status == 'error' else 'ok'}" for m in results)
    last_review = values.get("reviews", [])[-1:] or [None]
    if metadata.get("source") == "input" or not messages:
        summary = "task received"
    elif nxt == ("review",) and ai is not None:
        if results:
            waiting = [c["name"] for c in ai.tool_calls if c["id"] not in {m.tool_call_id for m in results}]
            summary = f"tools finished: {ran}; still to review: {', '.join(waiting)}"
        else:
            proposed = ", ".join(f"{c['name']}({summarize_args(c['args'], 60)})" for c in ai.tool_calls)
            summary = f"model proposed: {proposed}"
        if snapshot.interrupts:
            summary += " (asked for review)"
    elif nxt == ("execute",) and last_review[0]:
        summary = "review: " + _decisions_line(last_review[0])
    elif nxt == ("planner",) and isinstance(messages[-1], HumanMessage):
        summary = f"task: {message_text(messages[-1])[:120]}"
    elif nxt == ("planner",) and last_review[0] and all(c["decision"] == "reject" for c in last_review[0]["calls"]):
        summary = "review: " + _decisions_line(last_review[0])
    elif nxt == ("planner",):
        summary = f"tools finished: {ran}" if ran else "back to the model"
    elif nxt == ("report",) and ai is not None:
        summary = f"model answered: {message_text(ai)[:120]}"
    elif not nxt:
        outcome = values.get("outcome") or "done"
        summary = f"{outcome}: {str(values.get('report', ''))[:120]}"
    else:
        summary = f"next: {', '.join(nxt)}"
    parent = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    return CheckpointInfo(
        checkpoint_id=snapshot.config["configurable"]["checkpoint_id"],
        step=step,
        next=nxt,
        created_at=snapshot.created_at or "",
        summary=summary,
        parent_id=parent,
        metadata={"source": metadata.get("source", "")},
    )


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
    parts = []
    for call in review["calls"]:
        who = f" by {review['decided_by']}" if review.get("decided_by") and call["mode"] == "ask" else ""
        parts.append(f"{call['name']} {call['decision']}{'d' if call['decision'].endswith('e') else 'ed'}{who}")
    return ", ".join(parts)
