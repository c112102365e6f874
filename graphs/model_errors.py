"""Why the model could not be used, in words that name what to fix.

The OpenAI client raises a handful of exception types for everything a model server can do wrong; a person running
the bot needs instead: which variable or server flag to change. ``explain`` turns an exception raised while asking
the model into a ``ModelProblem`` saying so (None when the exception is not about the model), and ``probe`` is the
start-up check: is the server reachable, does it know the model, does it return structured tool calls.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from .errors import ModelProblem
from .textcalls import SERVER_HINT, UnreadableToolCall, read_text_calls

_CONTEXT = re.compile(
    r"context (?:size|length|window)|maximum context|context_length_exceeded|too many tokens|exceeds the available",
    re.IGNORECASE,
)
_UNKNOWN_MODEL = re.compile(r"model\b.*\b(?:not found|does not exist|unknown|not loaded)|model_not_found", re.I)
PROBE_TOOL = "chatops_probe"
PROBE_TIMEOUT_S = 60.0


def where(base_url: str | None, model: str | None) -> str:
    return f"model {model or '(default)'} at {base_url or 'https://api.openai.com/v1'}"


def explain(exc: BaseException, base_url: str | None, model: str | None) -> ModelProblem | None:
    """A ModelProblem naming what to fix, for an exception raised while asking the model; None if it is not one."""
    at = where(base_url, model)
    if isinstance(exc, ModelProblem):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ModelProblem(
            f"The {at} did not answer in time. A local model may still be loading or be too slow for this machine: "
            "check the server's log, or use a smaller model."
        )
    if isinstance(exc, openai.APIConnectionError):
        causes = _causes(exc)
        if any(_cut_mid_stream(c) for c in causes):
            return _cut(at)
        cause = causes[-1]
        reason = f" ({type(cause).__name__}: {cause})" if cause is not exc else ""
        return ModelProblem(
            f"The model server cannot be reached{reason}: is it running, and is OPENAI_BASE_URL right? ({at})"
        )
    if isinstance(exc, openai.AuthenticationError):
        return ModelProblem(
            f"The model server refused the API key (HTTP 401): set OPENAI_API_KEY to a valid key ({at})."
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ModelProblem(
            f"The model server refused this key access to the model (HTTP 403): check OPENAI_API_KEY "
            f"and CHATOPS_MODEL ({at})."
        )
    if isinstance(exc, openai.APIStatusError):
        message = _message(exc)
        if exc.status_code == 404:
            if _UNKNOWN_MODEL.search(message) or "model" in message.lower():
                return ModelProblem(
                    f"The model server does not know the model {model!r} (HTTP 404: {message}): set CHATOPS_MODEL to "
                    "one it serves (GET /v1/models lists them)."
                )
            return ModelProblem(
                f"The model server answered HTTP 404 ({message}): OPENAI_BASE_URL must end in the API's root, "
                f"usually /v1 ({at})."
            )
        if _CONTEXT.search(message):
            return ModelProblem(
                f"The conversation no longer fits the model's context ({message}). Start a new thread, or give the "
                "server a larger context: llama.cpp -c 16384, vLLM --max-model-len, Ollama num_ctx."
            )
        if exc.status_code == 400 and _UNKNOWN_MODEL.search(message):
            return ModelProblem(f"The model server does not know the model {model!r} ({message}): set CHATOPS_MODEL.")
        if exc.status_code == 429:
            return ModelProblem(f"The model server is rate limiting requests (HTTP 429: {message}); try again later.")
        if exc.status_code >= 500:
            return ModelProblem(f"The model server failed (HTTP {exc.status_code}: {message}); check its log ({at}).")
        return ModelProblem(f"The model server refused the request (HTTP {exc.status_code}: {message}) ({at}).")
    if isinstance(exc, openai.APIError):  # e.g. an error event inside the stream
        return ModelProblem(f"The model server reported an error mid-answer ({exc}); check its log ({at}).")
    if any(_cut_mid_stream(c) for c in _causes(exc)):
        return _cut(at)
    return None


def _message(exc: openai.APIStatusError) -> str:
    body: Any = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return " ".join(str(text).split())[:300]
    return " ".join(str(exc.message).split())[:300]


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (bounded: a cycle of causes is possible)."""
    found = [exc]
    while len(found) < 10 and (cause := found[-1].__cause__ or found[-1].__context__) is not None:
        if cause in found:
            break
        found.append(cause)
    return found


def _cut_mid_stream(exc: BaseException | None) -> bool:
    return isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)) or (
        exc is not None and "incomplete chunked read" in str(exc)
    )


def _cut(at: str) -> ModelProblem:
    return ModelProblem(
        f"The model server closed the connection in the middle of its answer ({at}): it may have crashed or run "
        "out of memory; check its log."
    )


@dataclass(frozen=True)
class ProbeResult:
    ok: bool  # reachable and answering
    # "structured", "text" (read from the text), "none" (answered without calling), "" (no answer), "offline"
    tool_calls: str
    line: str  # what to tell the person starting the bot, in one line
    seconds: float


async def probe(
    base_url: str | None, api_key: str | None, model: str, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Ask the model once, with one tool it is told to call: reachable? structured tool calls?"""
    started = time.monotonic()
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0)
    tool = {
        "type": "function",
        "function": {
            "name": PROBE_TOOL,
            "description": "Report that the bot can call tools.",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
        },
    }
    at = where(base_url, model)
    try:
        answer = await asyncio.wait_for(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Call the {PROBE_TOOL} tool with word 'ok'."}],
                tools=[tool],  # type: ignore[list-item]
                max_tokens=64,
                temperature=0,
            ),
            timeout_s,
        )
    except Exception as exc:  # noqa: BLE001 - any failure is the answer to the probe
        problem = explain(exc, base_url, model) if not isinstance(exc, TimeoutError) else None
        text = str(problem) if problem else f"The {at} did not answer the start-up probe within {timeout_s:g}s."
        return ProbeResult(False, "", f"Model check: {text}", time.monotonic() - started)
    finally:
        await client.close()
    seconds = time.monotonic() - started
    message = answer.choices[0].message if answer.choices else None
    if message is not None and message.tool_calls:
        return ProbeResult(
            True, "structured", f"Model check: {at} answers with structured tool calls ({seconds:.1f}s).", seconds
        )
    content = (message.content if message else "") or ""
    try:
        read = read_text_calls(content)
    except UnreadableToolCall:
        read = None
    if read is not None and read.calls:
        return ProbeResult(
            True,
            "text",
            f"Model check: {at} answers, but writes its tool calls as text ({seconds:.1f}s); the bot reads them from "
            f"the text and says so on each card. {SERVER_HINT}",
            seconds,
        )
    return ProbeResult(
        True,
        "none",
        f"Model check: {at} answers but did not call the probe tool ({seconds:.1f}s): it may not support tools. "
        f"{SERVER_HINT}",
        seconds,
    )


async def check_model(base_url: str | None, api_key: str | None, model: str | None, configured: bool) -> ProbeResult:
    """The start-up check: the probe's answer, or (no model configured) that the offline planner answers."""
    if not configured:
        line = (
            "Model check: no model configured; the offline planner answers "
            "(set OPENAI_BASE_URL, OPENAI_API_KEY or CHATOPS_MODEL)."
        )
        return ProbeResult(True, "offline", line, 0.0)
    from .settings import DEFAULT_MODEL

    return await probe(base_url, api_key, model or DEFAULT_MODEL)
