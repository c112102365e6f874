"""Block Kit builders that enforce Slack's limits once, where blocks are made (see docs/slack-platform.md)."""

from __future__ import annotations

import re
from typing import Any

from graphs.display import visible

Block = dict[str, Any]

MAX_MESSAGE_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
SECTION_TEXT = 3000
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
CHECKBOX_OPTIONS = 10
OPTION_TEXT = 75
OPTION_VALUE = 150
MODAL_TITLE = 24
PRIVATE_METADATA = 3000
MESSAGE_TEXT = 40000


RICH_TEXT = 3000  # per text element: Slack documents none for rich_text, so we keep to the section limit


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """Make user or model text literal in mrkdwn: no accidental links, mentions or broadcasts."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def literal(text: str) -> str:
    """Text from a person, the model or a tool, for any mrkdwn or fallback ``text``: visible and inert."""
    return escape(visible(text))


# Slack's broadcast syntax (security.md): these notify a whole channel or group when sent unescaped.
BROADCAST = re.compile(r"<!(channel|here|everyone)(?:\|([^>]*))?>|<!subteam\^([A-Z0-9]+)(?:\|([^>]*))?>")


def broadcasts(text: str) -> list[str]:
    """The broadcasts in ``text`` as a person would call them: @channel, @here, @everyone, @<group>."""
    return [_broadcast_name(m) for m in BROADCAST.finditer(text)]


def neutralize_broadcasts(text: str) -> str:
    """``text`` with every broadcast turned into plain words ("@channel") that notify nobody."""
    return BROADCAST.sub(_broadcast_name, text)


def _broadcast_name(match: re.Match[str]) -> str:
    if match.group(1):
        return f"@{match.group(1)}"
    label = (match.group(4) or "").lstrip("@")
    return f"@{label or match.group(3)}"


# --- literal text: rich_text elements are never parsed for mrkdwn, mentions or links ---------------


def rich_text(*elements: Block, block_id: str | None = None) -> Block:
    block: Block = {"type": "rich_text", "elements": list(elements)}
    if block_id:
        block["block_id"] = block_id
    return block


def rt_section(*elements: Block) -> Block:
    return {"type": "rich_text_section", "elements": [e for e in elements if e.get("type") != "text" or e["text"]]}


def rt_pre(text: str) -> Block:
    return {"type": "rich_text_preformatted", "elements": [rt_text(text)]}


def rt_quote(text: str) -> Block:
    return {"type": "rich_text_quote", "elements": [rt_text(text)]}


def rt_text(text: str, *, bold: bool = False, italic: bool = False, code: bool = False) -> Block:
    element: Block = {"type": "text", "text": clip(text, RICH_TEXT)}
    style = {k: True for k, on in (("bold", bold), ("italic", italic), ("code", code)) if on}
    if style:
        element["style"] = style
    return element


def rt_user(user_id: str) -> Block:
    return {"type": "user", "user_id": user_id}


def plain(text: str, limit: int = OPTION_TEXT, *, emoji: bool = True) -> Block:
    """A plain_text object: never formatted. Data shown in one passes ``emoji=False`` so ``:x:`` stays text."""
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": emoji}


def mrkdwn(text: str, limit: int = SECTION_TEXT) -> Block:
    return {"type": "mrkdwn", "text": clip(text, limit) or " "}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, HEADER_TEXT)}


def section(text: str, block_id: str | None = None) -> Block:
    block: Block = {"type": "section", "text": mrkdwn(text)}
    if block_id:
        block["block_id"] = block_id
    return block


def context(*texts: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(t) for t in texts[:CONTEXT_ELEMENTS]]}


def divider() -> Block:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str, style: str | None = None) -> Block:
    if len(value) > BUTTON_VALUE:
        raise ValueError(f"button value longer than {BUTTON_VALUE} chars")
    element: Block = {"type": "button", "text": plain(text, BUTTON_TEXT), "action_id": action_id, "value": value}
    if style:
        element["style"] = style
    return element


def option(text: str, value: str, description: str | None = None) -> Block:
    if len(value) > OPTION_VALUE:
        raise ValueError(f"option value longer than {OPTION_VALUE} chars")
    built: Block = {"text": plain(text, OPTION_TEXT), "value": value}
    if description:
        built["description"] = plain(description, OPTION_TEXT)
    return built


def checkbox_groups(options: list[Block], *, action_id: str, block_prefix: str, ticked: bool = True) -> list[Block]:
    """Checkbox elements hold at most 10 options: one actions block per 10."""
    groups = []
    for start in range(0, len(options), CHECKBOX_OPTIONS):
        chunk = options[start : start + CHECKBOX_OPTIONS]
        # action ids must be unique within a message, so each group gets its own.
        element: Block = {
            "type": "checkboxes",
            "action_id": f"{action_id}_{start // CHECKBOX_OPTIONS}",
            "options": chunk,
        }
        if ticked:
            element["initial_options"] = chunk
        groups.append(
            {"type": "actions", "block_id": f"{block_prefix}{start // CHECKBOX_OPTIONS}", "elements": [element]}
        )
    return groups


def fit_message(blocks: list[Block], overflow_note: str) -> list[Block]:
    """Keep a message within 50 blocks; the last kept block says what was left out."""
    if len(blocks) <= MAX_MESSAGE_BLOCKS:
        return blocks
    return [*blocks[: MAX_MESSAGE_BLOCKS - 1], context(overflow_note)]
