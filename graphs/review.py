"""Building a review request from proposed tool calls, and checking a human's answer to it.

An answer is checked in two steps. ``check_response`` checks what can be checked without running anything: one
decision per call, each of an allowed type, an edit keeping its tool, edited arguments fitting the tool's schema.
The graph runs it on every answer it receives. ``check_edited_call`` is the one full check of an edited call: the
schema, then the tool's own check (where a URL or a channel really points), which may take a network round trip,
so it runs before the answer reaches the graph (``Runs.resume``, and ``Runs.check_edit`` for an edit dialog).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidArguments, InvalidDecision
from .policy import Policy
from .textcalls import READ_FROM_TEXT, is_text_call
from .tools import ASSESS_TIMEOUT_S, ToolRegistry, summarize_args
from .types import ActionRequest, Assessment, Decision, ReviewConfig, ReviewRequest


def build_request(
    calls: Sequence[Mapping[str, Any]],
    registry: ToolRegistry,
    policy: Policy,
    assessments: dict[str, dict[str, Any]] | None = None,
) -> ReviewRequest:
    actions: list[ActionRequest] = []
    configs: list[ReviewConfig] = []
    for call in calls:
        tool = registry.get(call["name"])
        action: ActionRequest = {
            "name": call["name"],
            "args": call["args"],
            "description": f"{call['name']}({summarize_args(call['args'])})",
            "tool_call_id": call["id"],
        }
        facts = list(((assessments or {}).get(call["id"]) or {}).get("facts") or [])
        if is_text_call(call["id"]):
            facts.insert(0, READ_FROM_TEXT)
        if facts:
            action["facts"] = facts
        actions.append(action)
        configs.append(
            {
                "action_name": call["name"],
                "allowed_decisions": policy.allowed_decisions(call["name"]),
                "args_schema": tool.json_schema(),
            }
        )
    return {"action_requests": actions, "review_configs": configs}


def check_response(request: ReviewRequest, response: Any, registry: ToolRegistry) -> list[Decision]:
    """Validate an answer to ``request`` without running any tool's own check (see the module docstring); return
    the decisions with edited args normalised by the schema.

    Raises InvalidDecision (or its subclass InvalidArguments) with a message a person can act on.
    """
    if not isinstance(response, dict) or not isinstance(response.get("decisions"), list):
        raise InvalidDecision('a review answer must be {"decisions": [...]}, one decision per proposed call')
    decisions = response["decisions"]
    actions = request["action_requests"]
    if len(decisions) != len(actions):
        raise InvalidDecision(f"expected {len(actions)} decisions (one per proposed call), got {len(decisions)}")
    checked: list[Decision] = []
    # Equal lengths: the count was checked above, and build_request makes one review config per action.
    calls = zip(decisions, actions, request["review_configs"], strict=True)
    for position, (decision, action, config) in enumerate(calls, 1):
        where = f"decision {position} ({action['name']})"
        kind = decision.get("type") if isinstance(decision, dict) else None
        if kind not in ("approve", "edit", "reject"):
            raise InvalidDecision(f"{where}: type must be approve, edit or reject, got {kind!r}")
        if kind not in config["allowed_decisions"]:
            raise InvalidDecision(f"{where}: {kind} is not allowed for this tool")
        if kind == "approve":
            checked.append({"type": "approve"})
        elif kind == "reject":
            message = decision.get("message") or ""
            if not isinstance(message, str):
                raise InvalidDecision(f"{where}: a rejection message must be text")
            checked.append({"type": "reject", "message": message})
        else:
            edited = decision.get("edited_action")
            if not isinstance(edited, dict) or "args" not in edited:
                raise InvalidDecision(f"{where}: an edit needs edited_action with args")
            if edited.get("name", action["name"]) != action["name"]:
                raise InvalidDecision(f"{where}: an edit may change the arguments, not the tool")
            args = registry.validate_args(action["name"], edited["args"])
            checked.append({"type": "edit", "edited_action": {"name": action["name"], "args": args}})
    return checked


async def check_edited_call(registry: ToolRegistry, name: str, args: Any) -> dict[str, Any]:
    """Edited arguments as the tool will get them: checked against its schema, then by the tool's own check;
    an edit either refuses raises InvalidArguments naming the field at fault."""
    checked = registry.validate_args(name, args)
    assess = registry.get(name).assess
    if assess is not None:
        try:
            found = await asyncio.wait_for(assess(checked), ASSESS_TIMEOUT_S)
        except TimeoutError:
            found = Assessment("deny", reason="it could not be checked in time")
        if found.mode == "deny":
            field = found.field if found.field in checked else next(iter(checked), "args")
            raise InvalidArguments(name, {field: found.reason})
    return checked


def rejection_text(name: str, message: str, by: str | None) -> str:
    who = f" by {by}" if by else ""
    reason = f" Reason: {message}" if message else " No reason was given."
    return f"Rejected{who}: this call to {name} did not run.{reason}"
