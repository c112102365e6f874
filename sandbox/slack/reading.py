"""What a person reads on a Slack message: its header and its text, as tests and the benchmark check them."""

from __future__ import annotations

from typing import Any


def header_of(message: dict[str, Any] | None) -> str:
    for block in (message or {}).get("blocks") or []:
        if block.get("type") == "header":
            return str(block["text"]["text"])
    return ""


def all_text(message: dict[str, Any] | None) -> str:
    """What a person reads on a message: its blocks' text, else its fallback text."""
    if message is None:
        return ""
    parts = []
    for block in message.get("blocks") or []:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        for element in block.get("elements") or []:
            if isinstance(element.get("text"), str):
                parts.append(element["text"])
            elif isinstance(element.get("text"), dict):
                parts.append(element["text"]["text"])
    return "\n".join(parts) or str(message.get("text", ""))
