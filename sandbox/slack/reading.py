"""What a person reads on a Slack message: its header and its text, as tests and the benchmark check them."""

from __future__ import annotations

from typing import Any


def header_of(message: dict[str, Any] | None) -> str:
    for block in (message or {}).get("blocks") or []:
        if block.get("type") == "header":
            return str(block["text"]["text"])
    return ""


def rich_text_of(block: dict[str, Any]) -> str:
    """A rich_text block as read: its sections one per line, mentions as Slack writes them (<@U…>)."""

    def inline(element: dict[str, Any]) -> str:
        kind = element.get("type")
        if kind == "text":
            return str(element.get("text", ""))
        if kind == "link":
            return str(element.get("text") or element.get("url", ""))
        if kind == "user":
            return f"<@{element.get('user_id')}>"
        if kind == "channel":
            return f"<#{element.get('channel_id')}>"
        if kind == "emoji":
            return f":{element.get('name')}:"
        return "".join(inline(e) for e in element.get("elements") or [] if isinstance(e, dict))

    lines = []
    for section in block.get("elements") or []:
        if section.get("type") == "rich_text_list":
            lines += [inline(item) for item in section.get("elements") or []]
        else:
            lines.append(inline(section))
    return "\n".join(lines)


def all_text(message: dict[str, Any] | None) -> str:
    """What a person reads on a message: its blocks' text, else its fallback text."""
    if message is None:
        return ""
    parts = []
    for block in message.get("blocks") or []:
        if block.get("type") == "rich_text":
            parts.append(rich_text_of(block))
            continue
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        for element in block.get("elements") or []:
            if isinstance(element.get("text"), str):
                parts.append(element["text"])
            elif isinstance(element.get("text"), dict):
                parts.append(element["text"]["text"])
    return "\n".join(parts) or str(message.get("text", ""))
