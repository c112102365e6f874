"""Showing text from models, people and tools as data: what a reviewer reads is exactly what will run.

Characters that change how text looks without being seen — bidi overrides that reorder it, zero-width and
other format characters, controls, Unicode line separators and non-ASCII spaces — are shown as visible
escapes such as ``⟨U+202E⟩``; long runs of spaces (padding that pushes the real text out of view) as
``⟨300 spaces⟩``. Letters in any script and line breaks appear as themselves. ``⟨`` itself is escaped, so
every ``⟨…⟩`` a reader sees was put there by this module. Surfaces (Slack, the terminal) add their own
escaping on top of this (Slack's ``&<>``); they never undo it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

OPEN, CLOSE = "⟨", "⟩"
SPACE_RUN = 4  # this many spaces in a row or more are counted instead of shown
_SPACES = re.compile(rf" {{{SPACE_RUN},}}|^ +| +$")
_NAMES = {0x09: "TAB", 0x0D: "CR"}


def _hidden(ch: str) -> bool:
    if ch == "\n":
        return False
    category = unicodedata.category(ch)
    # Cc controls, Cf format (bidi, zero-width, tags), Zl/Zp line and paragraph separators, Co private use,
    # Cn unassigned; Zs other than the plain space (NBSP and friends look like a space but are not one).
    return category in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Cs") or (category == "Zs" and ch != " ") or ch == OPEN


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"{OPEN}{_NAMES.get(code, f'U+{code:04X}')}{CLOSE}"


def visible(text: str) -> str:
    """``text`` with every invisible or look-alike-space character, and padding, made visible."""
    if text == "":
        return f"{OPEN}empty{CLOSE}"
    shown = "".join(_escape(ch) if _hidden(ch) else ch for ch in text)

    def count(match: re.Match[str]) -> str:
        n = len(match.group(0))
        return f"{OPEN}{n} space{'s' if n != 1 else ''}{CLOSE}"

    return "\n".join(_SPACES.sub(count, line) for line in shown.split("\n"))


def hidden_characters(text: str) -> list[str]:
    """Names of the hidden characters in ``text`` (once each, in order), for a warning a reviewer reads."""
    found: dict[str, None] = {}
    for ch in text:
        if _hidden(ch) and ch != OPEN:
            name = unicodedata.name(ch, "") or _NAMES.get(ord(ch), "control character")
            found[f"U+{ord(ch):04X} {name.lower()}".strip()] = None
    return list(found)


def value_text(value: Any) -> str:
    """An argument value as it will be passed: strings as they are, anything else as JSON (non-ASCII kept)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def show_value(value: Any) -> str:
    return visible(value_text(value))


def shorten(text: str, limit: int) -> tuple[str, int]:
    """At most ``limit`` characters of ``text`` and how many were left out (0: nothing)."""
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def summary(args: dict[str, Any], limit: int = 200) -> str:
    """A one-line view of arguments for lists and logs: ``channel=#ops, text="…"``, every value visible.

    One line: a line break inside a value shows as ⟨LF⟩ here (cards show values whole, with their breaks)."""
    parts = []
    for key, value in args.items():
        text = value_text(value)
        quoted = isinstance(value, str) and (" " in text or not text or "," in text or "=" in text)
        shown = visible(text).replace("\n", f"{OPEN}LF{CLOSE}") if text else ""
        parts.append(f'{visible(str(key))}="{shown}"' if quoted else f"{visible(str(key))}={shown}")
    line = ", ".join(parts)
    return line if len(line) <= limit else line[: limit - 1] + "…"
