"""Approval cards and the edit dialog: pure functions from a pending review to Block Kit JSON, and back.

A card carries its run id and the interrupt it answers in every button's value, so a click can be checked
against what is pending now (a decided, rewound or expired card is refused). Block ids include the
interrupt id, so a replaced card never inherits stale checkbox state in Slack's clients.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from graphs.display import hidden_characters, shorten, value_text, visible
from graphs.types import ActionRequest, Decision, ReviewRequest

from .blocks import (
    MAX_MODAL_BLOCKS,
    MODAL_TITLE,
    PRIVATE_METADATA,
    SECTION_TEXT,
    Block,
    button,
    context,
    divider,
    fit_message,
    header,
    literal,
    mrkdwn,
    option,
    plain,
    rich_text,
    rt_pre,
    rt_quote,
    rt_section,
    rt_text,
    rt_user,
    section,
)
from .errors import MalformedCard

SELECT_ACTION = "select_calls"
APPROVE_ACTION = "approve"
REJECT_ACTION = "reject"
EDIT_ACTION = "edit"
EDIT_CALLBACK = "edit_review"
CALLS_BLOCK_PREFIX = "calls_"


@dataclass(frozen=True)
class CardRef:
    run_id: str
    interrupt_id: str

    @property
    def value(self) -> str:
        return f"{self.run_id}:{self.interrupt_id}"

    @classmethod
    def parse(cls, value: Any) -> CardRef:
        if not isinstance(value, str) or value.count(":") != 1:
            raise MalformedCard(f"not an approval card value: {str(value)[:80]!r}")
        run_id, interrupt_id = value.split(":")
        if not run_id.isalnum() or not interrupt_id.isalnum():
            raise MalformedCard(f"not an approval card value: {value[:80]!r}")
        return cls(run_id, interrupt_id)


# What a card shows of argument values: every value in full up to these sizes; beyond, the card says how much
# it left out and a button shows every value whole. A call whose arguments are longer than a person can
# review at all never reaches a card (ToolRegistry.validate_args refuses it).
VALUE_SHOWN = 1000
CARD_SHOWN = 8000
INLINE_VALUE = 80  # a single-line value at most this long is shown inline; longer ones get their own box
SHOW_ARGS_ACTION = "show_args"
SHOW_TASK_ACTION = "show_task"
TASK_SHOWN = 500  # characters of the task on a card; the rest behind "Show the task in full"


def mentions(users: str | list[str]) -> str:
    ids = users.split(",") if isinstance(users, str) else users
    return ", ".join(f"<@{u}>" for u in ids if u) or "someone"


def _asked(requester: str | None, task: str, ref: CardRef | None = None) -> list[Block]:
    """Who asked and what, as data: the task is quoted literally, never formatted. A long task is shortened
    (saying by how much); with ``ref`` (a card still open) a button shows it whole."""
    who = rt_user(requester) if requester else rt_text("Someone")
    shown, cut = shorten(visible(task), TASK_SHOWN)
    parts = [rt_section(who, rt_text(" asked:")), rt_quote(shown + ("…" if cut else ""))]
    if cut:
        parts.append(rt_section(rt_text(f"✂ {cut:,} more characters of the task not shown here", italic=True)))
    blocks = [rich_text(*parts)]
    if cut and ref is not None:
        blocks.append({"type": "actions", "elements": [button("Show the task in full", SHOW_TASK_ACTION, ref.value)]})
    return blocks


def call_facts(action: ActionRequest, args: dict[str, Any] | None = None) -> list[str]:
    """What a reviewer must know beyond the values: the tool's own findings (where a URL or a channel really
    points), and any hidden characters in a value."""
    facts = list(action.get("facts") or []) if args is None else []
    for name, value in (action["args"] if args is None else args).items():
        hidden = hidden_characters(value_text(value))
        if hidden:
            facts.append(
                f"⚠ {name} contains hidden characters (each shown by its code): {', '.join(hidden[:4])}"
                + (" …" if len(hidden) > 4 else "")
            )
    return facts


class _Budget:
    """How many characters of values the card still shows in full."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, text: str, limit: int = VALUE_SHOWN) -> tuple[str, int]:
        shown, cut = shorten(text, max(0, min(limit, self.left)))
        self.left -= len(shown)
        return shown, cut


def _call_block(
    n: int, name: str, args: dict[str, Any], facts: list[str], budget: _Budget, suffix: str = ""
) -> tuple[Block, int]:
    """One call as data: its tool, each argument and its value (boxed when long or on several lines), the
    facts, and how many characters were left out. Nothing in it is mrkdwn."""
    sections: list[Block] = [rt_section(rt_text(f"{n}. "), rt_text(name, bold=True, code=True), rt_text(suffix))]
    left_out = 0
    if not args:
        sections.append(rt_section(rt_text("(no arguments)", italic=True)))
    for key, value in args.items():
        shown, cut = budget.take(visible(value_text(value)))
        left_out += cut
        label = f"{visible(str(key))}{'' if isinstance(value, str) else ' (' + _kind(value) + ')'}: "
        if cut == 0 and "\n" not in shown and len(shown) <= INLINE_VALUE:
            sections.append(rt_section(rt_text(label), rt_text(shown, code=True)))
        else:
            sections += [rt_section(rt_text(label)), rt_pre(shown + ("…" if cut else ""))]
            if cut:
                sections.append(
                    rt_section(rt_text(f"✂ {cut:,} more characters of {visible(str(key))} not shown here", italic=True))
                )
    sections += [rt_section(rt_text(f"↳ {visible(fact)}", italic=True)) for fact in facts]
    return rich_text(*sections), left_out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return "JSON"


def _calls(ref: CardRef, actions: list[ActionRequest], budget: _Budget) -> list[Block]:
    """Each proposed call once: its values, then its own checkbox (ticked) and, if the card shortened it, a
    button that shows it whole."""
    blocks: list[Block] = []
    nonce = ref.interrupt_id[:8]
    for n, action in enumerate(actions, 1):
        block, left_out = _call_block(n, action["name"], action["args"], call_facts(action), budget)
        tick = option(f"Allow call {n} ({action['name']})", str(n - 1))
        elements: list[Block] = [
            {
                "type": "checkboxes",
                "action_id": f"{SELECT_ACTION}_{n - 1}",
                "options": [tick],
                "initial_options": [tick],
            }
        ]
        if left_out:
            elements.append(button(f"Show call {n} in full", f"{SHOW_ARGS_ACTION}_{n - 1}", ref.value))
        blocks += [block, {"type": "actions", "block_id": f"{CALLS_BLOCK_PREFIX}{nonce}_{n - 1}", "elements": elements}]
    return blocks


def _show_in_full(ref: CardRef, n: int, left_out: int) -> Block:
    return {
        "type": "section",
        "text": mrkdwn(f"Call {n} is shortened on this card ({left_out:,} characters left out)."),
        "accessory": button("Show in full", f"{SHOW_ARGS_ACTION}_{n - 1}", ref.value),
    }


def approval_card(
    ref: CardRef,
    request: ReviewRequest,
    *,
    requester: str | None,
    task: str,
    required: int = 1,
    approved_by: list[str] | None = None,
    proposal: list[Decision] | None = None,
    expires_at: float | None = None,
    origin: str | None = None,
) -> tuple[str, list[Block]]:
    """The card asking for approval; ``origin`` (our own mrkdwn) says where it was asked when that is not this
    card's thread. With ``proposal`` (a first approver's choice on a card that needs
    several approvers) the checkboxes give way to that proposal, which later approvers confirm."""
    actions = request["action_requests"]
    nonce = ref.interrupt_id[:8]
    blocks: list[Block] = [header("Approval needed"), *_asked(requester, task, ref)]
    budget = _Budget(CARD_SHOWN)
    if proposal is None:
        blocks += [
            section(f"*The agent wants to run {len(actions)} call{'s' if len(actions) != 1 else ''}:*"),
            *_calls(ref, actions, budget),
        ]
        buttons = [
            button("Approve selected", APPROVE_ACTION, ref.value, "primary"),
            button("Reject…", REJECT_ACTION, ref.value, "danger"),
            button("Edit…", EDIT_ACTION, ref.value),
        ]
    else:
        blocks += [section("*Proposed by the first approver:*"), *_decided_calls(request, proposal, budget, ref)]
        buttons = [
            button("Approve", APPROVE_ACTION, ref.value, "primary"),
            button("Reject…", REJECT_ACTION, ref.value, "danger"),
        ]
    blocks.append({"type": "actions", "block_id": f"decide_{nonce}_{len(approved_by or [])}", "elements": buttons})
    notes = [f"Run `{ref.run_id}`"]
    if origin:
        notes.append(origin)
    if required > 1:
        notes.append(
            f"*{len(approved_by or [])} of {required} approvals*"
            + (f" ({mentions(approved_by)})" if approved_by else "")
        )
    if proposal is None:
        notes.append("untick a call to reject it; Reject… rejects them all and ends the run")
    if expires_at:
        notes.append("expires " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at)))
    blocks.append(context(" · ".join(notes)))
    text = f"Approval needed for run {ref.run_id}: " + literal(", ".join(a["name"] for a in actions))
    return text, fit_message(blocks, "Too many calls to show on one card: reject it and ask for fewer at a time.")


def _decided_calls(
    request: ReviewRequest, decisions: list[Decision], budget: _Budget, ref: CardRef | None = None
) -> list[Block]:
    """Each call with its decision and the arguments it runs with (edited ones whole); with ``ref``, a call
    shortened here gets a Show in full button (for later approvers of a proposal)."""
    blocks = []
    for n, (action, decision) in enumerate(zip(request["action_requests"], decisions, strict=False), 1):
        mark = DECISION_MARK[decision["type"]]
        if decision["type"] == "edit":
            args = decision["edited_action"]["args"]
            block, left_out = _call_block(
                n, action["name"], args, call_facts(action, args), budget, f" — {mark}, now runs with:"
            )
        else:
            reason = (
                f" ({visible(decision['message'])})" if decision["type"] == "reject" and decision.get("message") else ""
            )
            block, left_out = _call_block(
                n, action["name"], action["args"], call_facts(action), budget, f" — {mark}{reason}"
            )
        blocks.append(block)
        if left_out and ref is not None and decision["type"] != "reject":
            blocks.append(_show_in_full(ref, n, left_out))
    return blocks


DECISION_MARK = {"approve": "✅ approved", "edit": "✏️ edited", "reject": "⛔ rejected"}


def decided_card(
    ref: CardRef,
    request: ReviewRequest,
    decisions: list[Decision],
    *,
    decided_by: str,
    requester: str | None,
    task: str,
    origin: str | None = None,
) -> tuple[str, list[Block]]:
    approved = sum(d["type"] != "reject" for d in decisions)
    blocks = [
        header("Approval decided"),
        *_asked(requester, task),
        *_decided_calls(request, decisions, _Budget(CARD_SHOWN)),
        context(
            f"Decided by {mentions(decided_by)} · {approved} of {len(decisions)} {_calls_word(len(decisions))}"
            f" allowed to run · run `{ref.run_id}`" + (f" · {origin}" if origin else "")
        ),
    ]
    text = f"Run {ref.run_id}: {approved} of {len(decisions)} calls allowed to run by {mentions(decided_by)}"
    return text, fit_message(blocks, "More calls were decided than one message can show; see /chatops audit.")


def _calls_word(count: int) -> str:
    return "call" if count == 1 else "calls"


def closed_card(
    ref: CardRef,
    request: ReviewRequest,
    *,
    title: str,
    reason: str,
    task: str,
    requester: str | None = None,
    origin: str | None = None,
) -> tuple[str, list[Block]]:
    """A card that can no longer be answered: cancelled, expired or replaced by a rewind."""
    budget = _Budget(CARD_SHOWN)
    calls = [
        _call_block(n, a["name"], a["args"], [], budget, " — did not run")[0]
        for n, a in enumerate(request["action_requests"], 1)
    ]
    blocks = [
        header(title),
        *_asked(requester, task),
        *calls,
        context(f"{reason} · run `{ref.run_id}`" + (f" · {origin}" if origin else "")),  # our own words
    ]
    return f"Run {ref.run_id}: {reason}", fit_message(blocks, "More calls than one message can show.")


def args_modal(ref: CardRef, request: ReviewRequest, index: int, args: dict[str, Any] | None = None) -> Block:
    """Every argument value of one call, whole and exact (hidden characters made visible), for reading.
    ``args``: the arguments it runs with when they differ from the proposed ones (a first approver's edit)."""
    action = request["action_requests"][index]
    shown_args = action["args"] if args is None else args
    edited = shown_args != action["args"]
    blocks: list[Block] = [
        section(
            f"Call {index + 1} of run `{ref.run_id}`: `{literal(action['name'])}`, exactly as "
            f"it will run{' (as edited by the first approver)' if edited else ''}. Hidden "
            "characters are shown by their code, e.g. ⟨U+202E⟩."
        )
    ]
    facts = call_facts(action, shown_args if edited else None)
    if facts:
        blocks.append(rich_text(*(rt_section(rt_text(f"↳ {visible(f)}", italic=True)) for f in facts)))
    for key, value in shown_args.items():
        blocks += [divider(), section(f"*{literal(str(key))}*")]
        text = visible(value_text(value))
        blocks += [
            {"type": "section", "text": plain(text[i : i + SECTION_TEXT - 100], SECTION_TEXT, emoji=False)}
            for i in range(0, max(len(text), 1), SECTION_TEXT - 100)
        ]
    if len(blocks) > MAX_MODAL_BLOCKS:
        blocks = [*blocks[: MAX_MODAL_BLOCKS - 1], section("_The rest does not fit in one dialog; reject the call._")]
    return {
        "type": "modal",
        "title": plain("Full arguments", MODAL_TITLE),
        "close": plain("Close", MODAL_TITLE),
        "blocks": blocks,
    }


def task_modal(ref: CardRef, task: str) -> Block:
    """The whole task of a run, exact, for reading (a card shortens a long one)."""
    text = visible(task)
    chunk = SECTION_TEXT - 100
    blocks: list[Block] = [section(f"The task of run `{ref.run_id}`, exactly as it was asked:")]
    blocks += [
        {"type": "section", "text": plain(text[i : i + chunk], SECTION_TEXT, emoji=False)}
        for i in range(0, max(len(text), 1), chunk)
    ][: MAX_MODAL_BLOCKS - 1]
    return {
        "type": "modal",
        "title": plain("The task", MODAL_TITLE),
        "close": plain("Close", MODAL_TITLE),
        "blocks": blocks,
    }


def selected_indexes(state_values: Any, interrupt_id: str) -> set[int] | None:
    """Which calls are ticked on the card, from block_actions ``state.values``; None if the card has no ticks state."""
    if not isinstance(state_values, dict):
        return None
    prefix = f"{CALLS_BLOCK_PREFIX}{interrupt_id[:8]}_"
    found = False
    ticked: set[int] = set()
    for block_id, elements in state_values.items():
        if not block_id.startswith(prefix) or not isinstance(elements, dict):
            continue
        states = [v for k, v in elements.items() if k.startswith(SELECT_ACTION) and isinstance(v, dict)]
        if not states:
            continue
        found = True
        for chosen in (o for state in states for o in state.get("selected_options") or []):
            value = chosen.get("value") if isinstance(chosen, dict) else None
            if isinstance(value, str) and value.isdigit():
                ticked.add(int(value))
    return ticked if found else None


# --- the edit dialog -----------------------------------------------------------------------------

# Slack wants action ids unique within a view: each input's action id is its block id.


def _arg_block_id(n: int, name: str) -> str:
    return f"arg_{n}_{name}"[:255]


def edit_modal(ref: CardRef, request: ReviewRequest, *, channel: str, card_ts: str) -> Block:
    metadata = json.dumps({"run": ref.run_id, "interrupt": ref.interrupt_id, "channel": channel, "card_ts": card_ts})
    if len(metadata) > PRIVATE_METADATA:
        raise ValueError("edit dialog metadata too long")
    blocks: list[Block] = [section(f"Run `{ref.run_id}`: change arguments, untick calls to reject them.")]
    for n, (action, config) in enumerate(zip(request["action_requests"], request["review_configs"], strict=True)):
        schema = config.get("args_schema") or {}
        properties = schema.get("properties") or {name: {} for name in action["args"]}
        required = set(schema.get("required") or [])
        include = option("run this call", "yes")
        blocks += [
            divider(),
            {
                "type": "input",
                "block_id": f"include_{n}",
                "optional": True,
                "label": plain(f"{n + 1}. {action['name']}", 2000),
                "element": {
                    "type": "checkboxes",
                    "action_id": f"include_{n}",
                    "options": [include],
                    "initial_options": [include],
                },
            },
        ]
        for name, prop in properties.items():
            blocks.append(_arg_input(n, name, prop, action["args"].get(name), name in required))
    if len(blocks) > 100:
        raise ValueError("too many calls and arguments for one edit dialog")
    return {
        "type": "modal",
        "callback_id": EDIT_CALLBACK,
        "title": plain("Edit tool calls", MODAL_TITLE),
        "submit": plain("Approve", MODAL_TITLE),
        "close": plain("Cancel", MODAL_TITLE),
        "private_metadata": metadata,
        "blocks": blocks,
    }


def _arg_input(n: int, name: str, prop: dict[str, Any], value: Any, required: bool) -> Block:
    block_id = _arg_block_id(n, name)
    kind = prop.get("type")
    label = f"{name} ({kind})" if kind and kind != "string" else name
    element: Block
    if "enum" in prop or kind == "boolean":
        choices = prop.get("enum") or [True, False]
        options = [option(json.dumps(c) if not isinstance(c, str) else c, json.dumps(c)) for c in choices]
        element = {"type": "static_select", "action_id": block_id, "options": options}
        chosen = [o for o in options if value is not None and o["value"] == json.dumps(value)]
        if chosen:
            element["initial_option"] = chosen[0]
    elif kind in ("integer", "number"):
        element = {"type": "number_input", "action_id": block_id, "is_decimal_allowed": kind == "number"}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            element["initial_value"] = str(value)
    elif kind == "string":
        text = "" if value is None else str(value)
        element = {"type": "plain_text_input", "action_id": block_id, "multiline": len(text) > 60 or "\n" in text}
        if text:
            element["initial_value"] = text
    else:
        label = f"{name} (JSON)"
        element = {"type": "plain_text_input", "action_id": block_id, "multiline": True}
        if value is not None:
            element["initial_value"] = json.dumps(value)
    block: Block = {
        "type": "input",
        "block_id": block_id,
        "label": plain(label, 2000),
        "element": element,
        "optional": not required,
    }
    hints = [prop["description"]] if prop.get("description") else []
    hidden = hidden_characters(value_text(value)) if value is not None else []
    if hidden:
        # An input box shows hidden characters as they are (invisibly): say so, and show them.
        block["label"] = plain(f"{label} — contains hidden characters", 2000)
        hints.append(f"Contains {', '.join(hidden[:4])}. As it runs now: {visible(value_text(value))}")
    if hints:
        block["hint"] = plain("\n".join(hints), 2000, emoji=False)
    return block


REJECT_CALLBACK = "reject_review"
REASON_BLOCK = "reason"


def reject_modal(ref: CardRef, *, channel: str, card_ts: str) -> Block:
    metadata = json.dumps({"run": ref.run_id, "interrupt": ref.interrupt_id, "channel": channel, "card_ts": card_ts})
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "title": plain("Reject", MODAL_TITLE),
        "submit": plain("Reject", MODAL_TITLE),
        "close": plain("Cancel", MODAL_TITLE),
        "private_metadata": metadata,
        "blocks": [
            section(f"Reject every call of run `{ref.run_id}`: nothing on the card runs, and the run ends."),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": plain("Reason", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_BLOCK,
                    "multiline": True,
                    "max_length": 1000,
                },
            },
            {
                "type": "input",
                "block_id": REPLAN_BLOCK,
                "optional": True,
                "label": plain("Instead of ending the run", 2000),
                "element": {"type": "checkboxes", "action_id": REPLAN_BLOCK, "options": [REPLAN_OPTION]},
                "hint": plain(
                    "The agent reads your reason and may propose other calls, which need a new approval.", 2000
                ),
            },
        ],
    }


REPLAN_BLOCK = "replan"
REPLAN_OPTION = option("Let the agent try another way", "yes")


def parse_reason(values: Any) -> tuple[str, bool]:
    """The reject dialog's answer: the reason, and whether the agent may try another way (else the run ends)."""
    state = ((values or {}).get(REASON_BLOCK) or {}).get(REASON_BLOCK) or {}
    replan = ((values or {}).get(REPLAN_BLOCK) or {}).get(REPLAN_BLOCK) or {}
    return (state.get("value") or "").strip(), bool(replan.get("selected_options"))


def parse_edit_metadata(view: Any) -> tuple[CardRef, str, str]:
    try:
        data = json.loads(view["private_metadata"])
        return CardRef(data["run"], data["interrupt"]), data["channel"], data["card_ts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedCard(f"edit dialog metadata is not ours: {exc}") from None


def parse_edit(values: Any, request: ReviewRequest) -> tuple[list[Decision], dict[str, str], dict[int, dict[str, str]]]:
    """Turn the dialog's fields into decisions. Returns (decisions, field errors by block id,
    {call index: {arg name: block id}}) so schema errors found later can be mapped back to fields."""
    values = values if isinstance(values, dict) else {}
    decisions: list[Decision] = []
    errors: dict[str, str] = {}
    fields: dict[int, dict[str, str]] = {}
    for n, (action, config) in enumerate(zip(request["action_requests"], request["review_configs"], strict=True)):
        include_state = (values.get(f"include_{n}") or {}).get(f"include_{n}") or {}
        if not include_state.get("selected_options"):
            decisions.append({"type": "reject", "message": "unticked in the edit dialog"})
            continue
        schema = config.get("args_schema") or {}
        properties = schema.get("properties") or {name: {} for name in action["args"]}
        args: dict[str, Any] = {}
        fields[n] = {}
        for name, prop in properties.items():
            block_id = _arg_block_id(n, name)
            fields[n][name] = block_id
            state = (values.get(block_id) or {}).get(block_id) or {}
            try:
                parsed = _field_value(state, prop)
            except ValueError as exc:
                errors[block_id] = str(exc)
                continue
            if parsed is not _MISSING:
                args[name] = parsed
        if args == action["args"]:
            decisions.append({"type": "approve"})
        else:
            decisions.append({"type": "edit", "edited_action": {"name": action["name"], "args": args}})
    return decisions, errors, fields


_MISSING = object()


def _field_value(state: dict[str, Any], prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    if state.get("type") == "static_select":
        chosen = state.get("selected_option")
        return _MISSING if not chosen else json.loads(chosen["value"])
    raw = state.get("value")
    if raw is None or raw == "":
        return _MISSING
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError("must be valid JSON") from None
