"""The agent graph: planner -> review -> execute -> planner ... -> report, with one human review per turn.

The planner proposes tool calls; review asks a human (one ``interrupt()`` for every call policy says
needs one) *before* anything runs, because an interrupt inside a tool executed by ToolNode with several
calls in one message is unsafe (only one shows at a time and an approved tool can run twice).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeAlias, TypedDict, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt

from .errors import InvalidArguments, InvalidDecision
from .ledger import ExecutionLedger, MemoryLedger
from .policy import Policy
from .redaction import Redactor
from .review import build_request, check_response, rejection_text
from .tools import ASSESS_TIMEOUT_S, CURRENT_CALL, CallContext, ToolRegistry
from .types import Assessment, Outcome, strictest

log = logging.getLogger(__name__)

# Calls one review may ask about: what an approval card shows whole within Slack's 50 blocks (cards.py).
MAX_REVIEW_CALLS = 20

SYSTEM_PROMPT = """You are a chat-ops assistant for an operations team. You do operational tasks by calling tools.
Propose every independent tool call the task needs in one turn. Some calls wait for a human to approve them;
a rejected call did not run: do not retry it unless asked. When the work is done, answer with a short report
of what ran and what it found."""


def _merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    return {**(old or {}), **new}


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    # Per tool call id: what the tool's own check found (Assessment.to_dict()), taken once when the call was
    # proposed, so the review step (which re-runs on resume) reads a fixed answer instead of checking again.
    assessments: Annotated[dict[str, dict[str, Any]], _merge]
    # One record per review step: what policy and the human decided for each proposed call.
    reviews: Annotated[list[dict[str, Any]], operator.add]
    report: str
    outcome: str  # "" while working, then an Outcome: done, nothing, failed, rejected, stopped, cancelled, expired
    detail: str  # why it ended so, in a line (which calls failed, or why nothing ran)


# The compiled agent: its state, no run-time context, and the same state as input and output.
AgentGraph: TypeAlias = CompiledStateGraph[AgentState, None, AgentState, AgentState]


def last_ai_message(messages: list[AnyMessage]) -> AIMessage | None:
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message
        if isinstance(message, HumanMessage):
            return None
    return None


def call_id(call: ToolCall) -> str:
    """A proposed call's id. LangChain's type allows none, but every planner here gives one (the model's id, or
    the offline planner's)."""
    return cast(str, call["id"])


def message_text(message: AnyMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


def build_graph(
    model: BaseChatModel,
    registry: ToolRegistry,
    policy: Policy,
    *,
    checkpointer: BaseCheckpointSaver[str] | None = None,
    ledger: ExecutionLedger | None = None,
    redactor: Redactor | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> AgentGraph:
    bound_model = model.bind_tools(registry.langchain_tools())
    ledger = ledger or MemoryLedger()
    redact = redactor or Redactor(())

    async def planner(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        response = await bound_model.ainvoke([SystemMessage(system_prompt), *state["messages"]], config)
        update: dict[str, Any] = {"messages": [response]}
        assessments = await _assess_calls(registry, getattr(response, "tool_calls", None) or [])
        if assessments:
            update["assessments"] = assessments
        return update

    def review(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        # Everything before interrupt() re-runs on resume: keep it pure.
        ai = last_ai_message(state["messages"])
        assert ai is not None and ai.tool_calls, "review runs only after the planner proposed tool calls"
        waiting = _unanswered(state["messages"], ai)
        assessments = state.get("assessments") or {}
        outcomes: dict[str, dict[str, Any]] = {}
        ask: list[ToolCall] = []
        for call in waiting:
            outcome = _policy_outcome(call, registry, policy, assessments.get(call_id(call)))
            if outcome is None and len(ask) >= MAX_REVIEW_CALLS:
                # More than one card can show in full: the rest do not run, and the model is told so.
                outcome = {
                    "mode": "invalid",
                    "type": "reject",
                    "system": (
                        f"The call did not run: at most {MAX_REVIEW_CALLS} calls can be reviewed at a time; "
                        "propose the rest after these are decided."
                    ),
                }
            if outcome is None:
                ask.append(call)
            else:
                outcomes[call_id(call)] = outcome
        runs_now = any(o["type"] == "approve" for o in outcomes.values())
        decided_by = None
        end = False
        if ask and not runs_now:
            request = build_request(ask, registry, policy, assessments)
            answer = interrupt(request)
            while True:
                try:
                    decisions = check_response(request, answer, registry)
                    break
                except InvalidDecision as exc:  # re-ask the same review, saying what was wrong
                    answer = interrupt({**request, "error": str(exc)})
            decided_by = answer.get("decided_by")
            # "Reject" on a card ends the task unless the approver let the agent try another way.
            end = bool(answer.get("end")) and all(d["type"] == "reject" for d in decisions)
            for call, decision in zip(ask, decisions, strict=True):  # one decision per call asked about
                outcomes[call_id(call)] = {"mode": "ask", **decision}
        # else: read-only calls run first, so people see their results while they decide the rest;
        # execute comes back here for the calls still waiting.

        calls: list[ToolCall] = []
        rejections: list[ToolMessage] = []
        record_calls: list[dict[str, Any]] = []
        for call in ai.tool_calls:
            outcome = outcomes.get(call_id(call))
            if outcome is None:
                calls.append(call)
                continue
            args = outcome["edited_action"]["args"] if outcome["type"] == "edit" else call["args"]
            calls.append({**call, "args": args})
            record_calls.append(
                {
                    "tool_call_id": call["id"],
                    "name": call["name"],
                    "mode": outcome["mode"],
                    "decision": outcome["type"],
                    "args": args,
                    "proposed_args": call["args"],
                    "message": outcome.get("message", ""),
                }
            )
            if outcome["type"] == "reject":
                text = outcome.get("system") or rejection_text(call["name"], outcome.get("message", ""), decided_by)
                rejections.append(ToolMessage(text, tool_call_id=call["id"], name=call["name"], status="error"))
        kwargs = {k: v for k, v in ai.additional_kwargs.items() if k != "tool_calls"}
        reviewed_ai = ai.model_copy(update={"tool_calls": calls, "additional_kwargs": kwargs})
        record = {
            # Unique per execution of this review step: a rewind replays it under a new task id.
            "key": f"{config['configurable']['thread_id']}:{config['configurable'].get('checkpoint_ns', '')}",
            "asked": bool(ask) and not runs_now,
            "decided_by": decided_by,
            "at": time.time(),
            "calls": record_calls,
            "end": end,
        }
        return {"messages": [reviewed_ai, *rejections], "reviews": [record]}

    async def execute(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        write = get_stream_writer()
        ai = last_ai_message(state["messages"])
        assert ai is not None
        review = state["reviews"][-1]
        # Per approved call: did a person review it (mode "ask"), or did policy let it run alone ("auto")?
        approved = {c["tool_call_id"]: c["mode"] for c in review["calls"] if c["decision"] != "reject"}
        results = []
        for call in _unanswered(state["messages"], ai):
            if call["id"] not in approved:
                continue
            key = f"{review['key']}:{call['id']}"
            if await ledger.claim(key):
                write({"event": "tool_started", "tool_call_id": call["id"], "name": call["name"], "args": call["args"]})
                started = time.perf_counter()
                token = CURRENT_CALL.set(CallContext(reviewed=approved[call["id"]] == "ask"))
                try:
                    ok, output = await _run_tool(registry, call["name"], call["args"])
                finally:
                    CURRENT_CALL.reset(token)
                # Secrets are taken out before the result reaches the ledger, the checkpoint, the model or chat.
                output = redact(output)
                await ledger.record(key, ok, output)
                duration_s = time.perf_counter() - started
            else:
                previous = await ledger.result(key)
                ok, output = previous or (
                    False,
                    f"{call['name']} was started earlier but its outcome was not recorded (the bot may have "
                    "restarted mid-call); it was not run again — check its effect by hand",
                )
                duration_s = 0.0
            write(
                {
                    "event": "tool_finished",
                    "tool_call_id": call["id"],
                    "name": call["name"],
                    "ok": ok,
                    "output": output,
                    "duration_s": duration_s,
                }
            )
            results.append(
                ToolMessage(output, tool_call_id=call["id"], name=call["name"], status="success" if ok else "error")
            )
        return {"messages": results}

    def report(state: AgentState) -> dict[str, Any]:
        ended = bool(state.get("reviews")) and state["reviews"][-1].get("end", False) and _ends_here(state)
        ai = last_ai_message(state["messages"])
        outcome, detail = task_outcome(state["messages"], state.get("reviews") or [])
        if ended:  # the approver rejected the work and ended the task (read-only calls may have run before)
            last = state["reviews"][-1]["calls"]
            outcome = "rejected"
            detail = "; ".join(f"{c['name']}: rejected" for c in last if c["decision"] == "reject")
        if outcome == "nothing":
            detail = "What I can do: " + "; ".join(f"{t.name} ({_first_sentence(t.description)})" for t in registry)
        # A task ended by a rejection never asked the model again: its last words are a plan, not a report.
        return {"report": "" if ended or ai is None else message_text(ai), "outcome": outcome, "detail": detail}

    def after_planner(state: AgentState) -> str:
        ai = last_ai_message(state["messages"])
        return "review" if ai is not None and ai.tool_calls else "report"

    def after_review(state: AgentState) -> str:
        review = state["reviews"][-1]
        if any(c["decision"] != "reject" for c in review["calls"]):
            return "execute"
        return "report" if review.get("end") else "planner"

    def after_execute(state: AgentState) -> str:
        ai = last_ai_message(state["messages"])
        return "review" if ai is not None and _unanswered(state["messages"], ai) else "planner"

    graph = StateGraph(AgentState)
    graph.add_node("planner", planner)
    graph.add_node("review", review)
    graph.add_node("execute", execute)
    graph.add_node("report", report)
    graph.add_edge(START, "planner")
    graph.add_conditional_edges("planner", after_planner, ["review", "report"])
    graph.add_conditional_edges("review", after_review, ["execute", "planner", "report"])
    graph.add_conditional_edges("execute", after_execute, ["review", "planner"])
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)


def _current_task(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    """The messages of the task being worked on: everything after the last person's message."""
    for n in range(len(messages) - 1, -1, -1):
        if isinstance(messages[n], HumanMessage):
            return list(messages[n + 1 :])
    return list(messages)


def _ends_here(state: AgentState) -> bool:
    """Whether the last review belongs to the current task (a follow-up task starts with no review of its own)."""
    last = state["reviews"][-1]
    ids = {c["tool_call_id"] for c in last["calls"]}
    return any(isinstance(m, ToolMessage) and m.tool_call_id in ids for m in _current_task(state["messages"]))


def task_outcome(messages: Sequence[AnyMessage], reviews: Sequence[Mapping[str, Any]]) -> tuple[Outcome, str]:
    """How the current task ended, and why in a line: done (a call ran and none failed), failed (a call that ran
    failed: which), rejected (calls were proposed, none ran), nothing (no call was proposed at all)."""
    results = [m for m in _current_task(messages) if isinstance(m, ToolMessage)]
    allowed = {c["tool_call_id"] for r in reviews for c in r["calls"] if c["decision"] != "reject"}
    ran = [m for m in results if m.tool_call_id in allowed]
    failed = [m for m in ran if m.status == "error"]
    if failed:
        return "failed", "; ".join(f"{m.name}: {_first_line(m)}" for m in failed)
    if ran:
        return "done", ""
    if results:
        return "rejected", "; ".join(f"{m.name}: {_first_line(m)}" for m in results)
    return "nothing", ""


def _first_sentence(text: str) -> str:
    sentence = text.split(". ")[0].split("; ")[0].strip().rstrip(".")
    return sentence[:120]


def _first_line(message: ToolMessage) -> str:
    lines = [line for line in message_text(message).splitlines() if line.strip()]
    first = lines[0].removeprefix(f"{message.name} failed: ") if lines else "(no output)"
    return first[:300]


def _unanswered(messages: list[AnyMessage], ai: AIMessage) -> list[ToolCall]:
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [call for call in ai.tool_calls if call["id"] not in answered]


async def _assess_calls(registry: ToolRegistry, calls: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run each proposed call's own check (where a tool has one) once, bounded in time."""
    found: dict[str, dict[str, Any]] = {}
    for call in calls:
        if call.get("name") not in registry or registry.get(call["name"]).assess is None:
            continue
        try:
            args = registry.validate_args(call["name"], call.get("args"))
        except InvalidArguments:
            continue  # review refuses it as invalid; nothing to check
        check = registry.get(call["name"]).assess
        assert check is not None
        try:
            assessment = await asyncio.wait_for(check(args), ASSESS_TIMEOUT_S)
        except TimeoutError:
            assessment = Assessment("deny", reason=f"{call['name']} could not be checked in time; it did not run")
        except Exception as exc:  # noqa: BLE001 - a failing check must fail closed, never open
            log.warning("the check of a %s call failed: %s", call["name"], type(exc).__name__)
            assessment = Assessment("deny", reason=f"{call['name']} could not be checked; it did not run")
        found[call["id"]] = assessment.to_dict()
    return found


def _policy_outcome(
    call: Mapping[str, Any], registry: ToolRegistry, policy: Policy, assessment: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What happens to a call without asking anyone; None means a human must decide."""
    name = call["name"]
    if name not in registry:
        available = ", ".join(registry.names)
        return {"mode": "deny", "type": "reject", "system": f"There is no tool named {name}; available: {available}"}
    try:
        registry.validate_args(name, call["args"])
    except InvalidArguments as exc:
        return {"mode": "invalid", "type": "reject", "system": f"The call did not run: {exc}"}
    checked = Assessment.from_dict(assessment) if assessment else None
    mode = strictest(policy.mode(name), checked.mode) if checked else policy.mode(name)
    if mode == "deny":
        if checked is not None and checked.mode == "deny":
            return {"mode": "deny", "type": "reject", "system": f"{checked.reason} It did not run."}
        return {"mode": "deny", "type": "reject", "system": f"Policy forbids {name}; it did not run."}
    if mode == "auto":
        return {"mode": "auto", "type": "approve"}
    return None


def proposed_outcomes(
    calls: Sequence[Mapping[str, Any]], registry: ToolRegistry, policy: Policy, assessments: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, str]]:
    """Per tool call id, what will happen to it before anyone is asked (auto, ask, deny or invalid), and why
    when it will not run."""
    found = {}
    for call in calls:
        outcome = _policy_outcome(call, registry, policy, assessments.get(call["id"]))
        found[call["id"]] = ("ask", "") if outcome is None else (outcome["mode"], outcome.get("system", ""))
    return found


async def _run_tool(registry: ToolRegistry, name: str, args: dict[str, Any]) -> tuple[bool, str]:
    """Run one tool call; failures and timeouts become a result the model reads, never an exception."""
    tool = registry.get(name)
    try:
        output = await asyncio.wait_for(tool.tool.ainvoke(args), tool.timeout_s)
        return True, str(output)
    except TimeoutError:
        return False, f"{name} timed out after {tool.timeout_s:g}s and was stopped"
    except Exception as exc:  # noqa: BLE001 - any tool failure is reported to the model, not raised
        detail = str(exc) or exc.__class__.__name__
        return False, f"{name} failed: {detail}"
