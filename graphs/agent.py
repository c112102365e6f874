"""The agent graph: planner -> review -> execute -> planner ... -> report, with one human review per turn.

The planner proposes tool calls; review asks a human (one ``interrupt()`` for every call policy says
needs one) *before* anything runs, because an interrupt inside a tool executed by ToolNode with several
calls in one message is unsafe (only one shows at a time and an approved tool can run twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from .model_errors import explain
from .policy import Policy
from .redaction import Redactor
from .review import build_request, check_response, rejection_text
from .textcalls import read_text_calls
from .tools import ASSESS_TIMEOUT_S, CURRENT_CALL, CallContext, ToolRegistry, summarize_args
from .types import Assessment, Outcome, strictest

log = logging.getLogger(__name__)

# Calls one review may ask about: what an approval card shows whole within Slack's 50 blocks (cards.py).
MAX_REVIEW_CALLS = 20

# Short on purpose (small local models read it every turn, and follow short rules best); what ran so far in the task
# is restated before each model turn (_progress_note).
SYSTEM_PROMPT = """You are a chat-ops assistant. Do the user's task with the tools you are given, and no others.
- Propose every call the task needs at once. Each call runs once: the same call again only returns the same result.
- A person approves calls with side effects. A rejected call did not run: do not propose it again.
- When the results answer the task, stop calling tools and reply with a short report of what ran and what it found.
- If no tool fits the task, say so in one sentence."""

ALREADY_DONE = "Already done: this exact call ran earlier in this task and was not run again. Its result:\n"
SAME_CALL_TWICE = "Not run: the same call appears twice in this message; it runs once (see its result)."


@dataclass(frozen=True)
class Limits:
    """Per task: how many times the model is asked, and how many tool calls run, before the run is stopped."""

    planner_turns: int = 8
    tool_calls: int = 40


def _merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    return {**(old or {}), **new}


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    # Per tool call id: what the tool's own check found (Assessment.to_dict()), taken once when the call was
    # proposed, so the review step (which re-runs on resume) reads a fixed answer instead of checking again.
    assessments: Annotated[dict[str, dict[str, Any]], _merge]
    # One record per review step: what policy and the human decided for each proposed call.
    reviews: Annotated[list[dict[str, Any]], operator.add]
    # Per tool call id: the earlier call it repeats ({"of": id}), found when it was proposed: it is not run again.
    repeats: Annotated[dict[str, dict[str, Any]], _merge]
    stop: str  # why the run stops before the model reported (a budget spent, a call repeated after "already done")
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
    limits: Limits | None = None,
) -> AgentGraph:
    bound_model = model.bind_tools(registry.langchain_tools())
    ledger = ledger or MemoryLedger()
    redact = redactor or Redactor(())
    limits = limits or Limits()
    model_url, model_name = getattr(model, "openai_api_base", None), getattr(model, "model_name", None)

    async def planner(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        task = _current_task(state["messages"])
        reviews = state.get("reviews") or []
        stop = _spent(task, reviews, limits)
        if stop:
            return {"stop": stop}
        prompt = [SystemMessage(system_prompt), *state["messages"]]
        note = _progress_note(task, reviews)
        if note:
            prompt.append(SystemMessage(note))
        try:
            response = await bound_model.ainvoke(prompt, config)
        except Exception as exc:
            problem = explain(exc, model_url, model_name)
            if problem is None:
                raise
            raise problem from exc
        if isinstance(response, AIMessage) and not response.tool_calls:
            read = read_text_calls(message_text(response))  # raises UnreadableToolCall: the run fails, saying why
            if read is not None and read.calls:
                response = response.model_copy(
                    update={"content": read.prose, "tool_calls": read.calls, "invalid_tool_calls": []}
                )
        update: dict[str, Any] = {"messages": [response]}
        calls = getattr(response, "tool_calls", None) or []
        repeats, again = _repeats(task, reviews, calls)
        stop = _over_budget(task, reviews, calls, repeats, limits)
        if again:
            stop = (
                f"the model proposed {again['name']}({summarize_args(again['args'], 80)}) again after it was told "
                "the call had already run; it seems stuck: ask again with a narrower task"
            )
        if stop:
            # The calls are answered (not run), so the thread's next task starts on a well-formed conversation.
            update["messages"].extend(
                ToolMessage("Not run: the run was stopped.", tool_call_id=call_id(c), name=c["name"], status="error")
                for c in calls
            )
            update["stop"] = stop
            return update
        if repeats:
            update["repeats"] = repeats
        assessments = await _assess_calls(registry, [c for c in calls if c["id"] not in repeats])
        if assessments:
            update["assessments"] = assessments
        return update

    def review(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        # Everything before interrupt() re-runs on resume: keep it pure.
        ai = last_ai_message(state["messages"])
        assert ai is not None and ai.tool_calls, "review runs only after the planner proposed tool calls"
        waiting = _unanswered(state["messages"], ai)
        assessments = state.get("assessments") or {}
        repeats = state.get("repeats") or {}
        earlier = {
            m.tool_call_id: message_text(m) for m in _current_task(state["messages"]) if isinstance(m, ToolMessage)
        }
        outcomes: dict[str, dict[str, Any]] = {}
        ask: list[ToolCall] = []
        for call in waiting:
            repeat = repeats.get(call_id(call))
            if repeat is not None:
                text = ALREADY_DONE + earlier[repeat["of"]] if repeat["of"] in earlier else SAME_CALL_TWICE
                outcomes[call_id(call)] = {"mode": "repeat", "type": "reject", "system": text}
                continue
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
                status = "success" if outcome["mode"] == "repeat" else "error"
                rejections.append(ToolMessage(text, tool_call_id=call["id"], name=call["name"], status=status))
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
        if state.get("stop"):
            return {"report": "", "outcome": "stopped", "detail": state["stop"]}
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
        if state.get("stop"):
            return "report"
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


def _call_key(name: str, args: Any) -> str:
    return name + json.dumps(args, sort_keys=True, default=str)


def _ran(task: Sequence[AnyMessage], reviews: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per call that ran in this task (its result is in the task, and it was not rejected or skipped): its id, by
    call key (tool and arguments as run, after any edit)."""
    not_run = {c["tool_call_id"] for r in reviews for c in r["calls"] if c["decision"] == "reject"}
    answered = {m.tool_call_id for m in task if isinstance(m, ToolMessage)} - not_run
    found: dict[str, str] = {}
    for message in task:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call_id(call) in answered:
                    found.setdefault(_call_key(call["name"], call["args"]), call_id(call))
    return found


def _repeats(
    task: Sequence[AnyMessage], reviews: Sequence[Mapping[str, Any]], calls: Sequence[ToolCall]
) -> tuple[dict[str, dict[str, Any]], ToolCall | None]:
    """The proposed calls that repeat one that already ran in this task (or an earlier one of the same message):
    {id: {"of": earlier id}}; and the first call that repeats one the model was already told had run (it is stuck)."""
    ran = _ran(task, reviews)
    in_task = {m.tool_call_id for m in task if isinstance(m, ToolMessage)}
    told = {
        _call_key(c["name"], c["args"])
        for r in reviews
        for c in r["calls"]
        if c.get("mode") == "repeat" and c["tool_call_id"] in in_task
    }
    repeats: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for call in calls:
        key = _call_key(call["name"], call["args"])
        if key in ran and key in told:
            return {}, call
        if key in ran:
            repeats[call_id(call)] = {"of": ran[key]}
        elif key in seen:
            repeats[call_id(call)] = {"of": seen[key]}
        else:
            seen[key] = call_id(call)
    return repeats, None


def _spent(task: Sequence[AnyMessage], reviews: Sequence[Mapping[str, Any]], limits: Limits) -> str:
    """Why the task may not ask the model again ("" if it may): its budget of model turns is spent."""
    turns = sum(1 for m in task if isinstance(m, AIMessage))
    if turns >= limits.planner_turns:
        return (
            f"stopped after {turns} model turns without a final report (the limit, CHATOPS_MAX_PLANNER_TURNS, is "
            f"{limits.planner_turns}); ask again with a narrower task"
        )
    return ""


def _over_budget(
    task: Sequence[AnyMessage],
    reviews: Sequence[Mapping[str, Any]],
    calls: Sequence[ToolCall],
    repeats: Mapping[str, Any],
    limits: Limits,
) -> str:
    """Why the proposed calls may not run ("" if they may): with the calls that ran, more than the task's budget."""
    ran = len(_ran(task, reviews))
    new = sum(1 for c in calls if call_id(c) not in repeats)
    if new and ran + new > limits.tool_calls:
        return (
            f"stopped: {ran} tool calls ran in this task and the model proposed {new} more, over the limit of "
            f"{limits.tool_calls} (CHATOPS_MAX_TOOL_CALLS); ask again with a narrower task"
        )
    return ""


def _progress_note(task: Sequence[AnyMessage], reviews: Sequence[Mapping[str, Any]]) -> str:
    """What happened so far in this task, in a line per kind, for the model's next turn ("" before any call)."""
    decided = {c["tool_call_id"]: c for r in reviews for c in r["calls"]}
    ran, failed, rejected, repeated = [], [], [], []
    for message in task:
        if not isinstance(message, ToolMessage):
            continue
        record = decided.get(message.tool_call_id, {})
        name = message.name or record.get("name", "a tool")
        if record.get("mode") == "repeat":
            repeated.append(name)
        elif record.get("decision") == "reject":
            rejected.append(name)
        elif message.status == "error":
            failed.append(name)
        else:
            ran.append(name)
    if not (ran or failed or rejected or repeated):
        return ""
    parts = [
        f"{label}: {', '.join(names)}."
        for label, names in (
            ("Ran", ran),
            ("Failed", failed),
            ("Rejected, did not run (do not propose again)", rejected),
            ("Proposed again and not rerun", repeated),
        )
        if names
    ]
    return "So far in this task: " + " ".join(parts) + " If that answers the task, reply with the report now."


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
