"""Tool calls a model wrote as text, read back as calls.

Small local models behind a server without a tool-call template (llama.cpp without ``--jinja``, Ollama with a
template that has no tools, vLLM without a tool parser) answer a request for a tool with its call written in the
text: a fenced ```` ```json ```` block holding ``{"name": ..., "arguments": {...}}``, Hermes/Qwen ``<tool_call>``
tags, or a bare JSON object. Left alone, the bot would show that JSON as the model's answer and end with nothing
run. ``read_text_calls`` finds those forms and returns them as proposed calls (each marked as read from text, so
the approval card can say so), plus the prose left around them.

Text that plainly is a tool call but cannot be read (broken JSON in a ``<tool_call>`` tag, a block with a name and
arguments that do not parse) raises ``UnreadableToolCall``: the run then ends failed with a message saying how to
give the model server tool-call support, instead of "done" with nothing done.

Only the shapes above count: a JSON object is a call when it has a string ``name`` (or ``function.name``) and an
``arguments`` / ``parameters`` object (or a JSON string of one). Anything else is prose and stays prose.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import ToolCall

from .errors import ModelProblem

# The id of a call read from text starts so: the card and the history say where the call came from.
TEXT_CALL_PREFIX = "textcall_"
READ_FROM_TEXT = "read from the model's text: its server returned no structured tool call"

SERVER_HINT = (
    "The model server probably has no tool-call support for this model, so the model writes its calls as text. "
    "llama.cpp: start llama-server with --jinja (and, if the model's own template has no tools, "
    "--chat-template-file with one that has). vLLM: add --enable-auto-tool-choice --tool-call-parser <parser for "
    "the model, e.g. hermes>. Ollama: use a model whose template supports tools (ollama show <model> --template "
    "mentions .Tools)."
)

_FENCE = re.compile(r"```[ \t]*(?P<lang>[A-Za-z0-9_-]*)[ \t]*\n?(?P<body>.*?)```", re.DOTALL)
_TAG = re.compile(r"<tool_call>(?P<body>.*?)(?:</tool_call>|\Z)", re.DOTALL)
# What makes text look like a call even when it does not parse: a "name" key near an "arguments"/"parameters" one.
_CALL_SHAPE = re.compile(r'"name"\s*:\s*"[^"]*"[\s\S]{0,400}?"(?:arguments|parameters)"\s*:', re.DOTALL)


class UnreadableToolCall(ModelProblem):
    """The model's text holds what is plainly a tool call, but it cannot be read."""

    def __init__(self, fragment: str, reason: str) -> None:
        shown = " ".join(fragment.split())
        shown = shown if len(shown) <= 160 else shown[:159] + "…"
        super().__init__(
            f"The model wrote a tool call as text that could not be read ({reason}): {shown}. {SERVER_HINT}"
        )


@dataclass(frozen=True)
class TextCalls:
    calls: list[ToolCall]
    prose: str  # the text with the calls taken out


# Where a call written as text may begin: a code fence, a <tool_call> tag, or a JSON object opening a line.
_CALL_START = re.compile(r"```|<tool_call>|^\s*\{", re.MULTILINE)


def prose_before_calls(text: str) -> str:
    """The part of a streaming answer that is surely words: up to where a call written as text may begin (the rest
    shows once the answer is complete and read)."""
    start = _CALL_START.search(text)
    return text if start is None else text[: start.start()].rstrip()


def is_text_call(call_id: str | None) -> bool:
    return bool(call_id) and str(call_id).startswith(TEXT_CALL_PREFIX)


def read_text_calls(text: str) -> TextCalls | None:
    """The calls written in ``text``, or None when it holds none (it is an answer). Raises UnreadableToolCall."""
    if not text or ("{" not in text and "<tool_call>" not in text):
        return None
    try:
        return _read(text)
    except UnreadableToolCall:
        # Some chat templates print their JSON example with doubled braces ({{"name": ...}}) and small models copy
        # them: read the text again with the doubling undone.
        if "{{" not in text:
            raise
        found = _read(text.replace("{{", "{").replace("}}", "}"))
        if found is None:
            raise
        return found


def _read(text: str) -> TextCalls | None:
    found: list[tuple[str, dict[str, Any]]] = []
    spans: list[tuple[int, int]] = []
    for match in _TAG.finditer(text):
        objects = _parse(match.group("body"))
        if objects is None:
            raise UnreadableToolCall(match.group(0), "the <tool_call> tag does not hold valid JSON")
        calls = [c for c in map(_as_call, objects) if c is not None]
        if not calls:
            raise UnreadableToolCall(match.group(0), "the <tool_call> tag holds no name and arguments")
        found += calls
        spans.append(match.span())
    code: list[tuple[int, int]] = []  # fenced code of another language: an example, never a call
    for match in _FENCE.finditer(text):
        if _inside(match.span(), spans):
            continue
        if match.group("lang").lower() not in ("", "json", "tool_call", "tool"):
            code.append(match.span())
            continue
        body = match.group("body")
        objects = _parse(body)
        if objects is None:
            if _CALL_SHAPE.search(body):
                raise UnreadableToolCall(match.group(0), "its JSON does not parse")
            continue
        calls = [c for c in map(_as_call, objects) if c is not None]
        if calls and len(calls) == len(objects):
            found += calls
            spans.append(match.span())
    if not found:  # a bare JSON object: the whole answer, or one written inside the prose
        decoder = json.JSONDecoder()
        at = text.find("{")
        while at != -1:
            if _inside((at, at + 1), code):
                at = text.find("{", next(end for start, end in code if start <= at < end))
                continue
            try:
                value, end = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                value, end = None, at + 1
            call = _as_call(value)
            if call is not None:
                found.append(call)
                spans.append((at, end))
            at = text.find("{", end)
        if not found:
            if not code and _CALL_SHAPE.search(text):
                raise UnreadableToolCall(text[text.find("{") :], "its JSON does not parse")
            return None
    prose = text
    for start, end in sorted(spans, reverse=True):
        prose = prose[:start] + prose[end:]
    return TextCalls(_tool_calls(found), _tidy(prose))


def _tool_calls(calls: list[tuple[str, dict[str, Any]]]) -> list[ToolCall]:
    made: list[ToolCall] = []
    for n, (name, args) in enumerate(calls):
        digest = hashlib.blake2b(
            json.dumps([n, name, args], sort_keys=True, default=str).encode(), digest_size=6
        ).hexdigest()
        made.append({"name": name, "args": args, "id": f"{TEXT_CALL_PREFIX}{digest}", "type": "tool_call"})
    return made


def _parse(body: str) -> list[Any] | None:
    """The JSON value(s) in ``body``: one value, a list of them, or several values one after another."""
    body = body.strip()
    if not body:
        return None
    try:
        value = json.loads(body)
        return value if isinstance(value, list) else [value]
    except json.JSONDecodeError:
        pass
    values = list(_values(body))
    return values or None


def _values(body: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    at = 0
    while at < len(body):
        while at < len(body) and body[at] in " \t\r\n,;":
            at += 1
        if at >= len(body):
            return
        try:
            value, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return
        yield value


def _as_call(value: Any) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        value = value["function"]
    name = value.get("name")
    args = value.get("arguments", value.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name.strip() or not isinstance(args, dict):
        return None
    return name.strip(), args


def _inside(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in spans)


def _tidy(prose: str) -> str:
    lines = [line.rstrip() for line in prose.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip()
