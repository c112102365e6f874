"""The model that plans: ChatOpenAI when one is configured, else a keyword-based offline planner.

The offline planner exists so the product can be tried with no model at all. It labels every answer
as offline, and it is never used when OPENAI_API_KEY, OPENAI_BASE_URL or CHATOPS_MODEL is set.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import SecretStr

from .builtin_tools import RUNNABLE, list_runbooks
from .settings import DEFAULT_MODEL, CoreSettings

OFFLINE_LABEL = "[offline planner: no model configured]"


def make_model(settings: CoreSettings, runbooks_dir: Path) -> BaseChatModel:
    if settings.model_configured:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=settings.model or DEFAULT_MODEL,
            base_url=settings.openai_base_url,
            # Local servers (vLLM, Ollama, LM Studio) accept any key; the client insists on one.
            api_key=SecretStr(settings.openai_api_key or "not-needed"),
            use_responses_api=False,
            streaming=True,
            timeout=120,
            max_retries=2,
            # A bound on one answer: a small model can write the same block until its context is full.
            max_completion_tokens=settings.model_max_tokens,
        )
    return OfflinePlanner(runbooks_dir=runbooks_dir, health_url=settings.health_url)


class OfflinePlanner(BaseChatModel):
    """Maps a request to tool calls by keywords; after the results, posts and reports what they said."""

    runbooks_dir: Path
    health_url: str | None = None

    @property
    def _llm_type(self) -> str:
        return "chatops-offline-planner"

    def bind_tools(self, tools: Any, **kwargs: Any) -> OfflinePlanner:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        request, results = _current_turn(messages)
        channel = _channel(request)
        if not results:
            calls = self._plan(request)
            if calls:
                return _tool_calls(calls)
            return AIMessage(
                f"{OFFLINE_LABEL} I could not map this request to a tool. Try words like "
                "'check http://…', 'disk', 'memory', 'load', 'search runbooks for …', or 'post a summary to #ops'."
            )
        summary = _summary(results)
        posted = any(m.name == "post_message" for m in results)
        if channel and not posted:
            return _tool_calls([("post_message", {"channel": channel, "text": summary})])
        return AIMessage(f"{OFFLINE_LABEL} Done.\n{summary}")

    def _plan(self, request: str) -> list[tuple[str, dict[str, Any]]]:
        text = request.lower()
        calls: list[tuple[str, dict[str, Any]]] = []
        urls = re.findall(r"https?://[^\s>|]+", request)
        if not urls and self.health_url and re.search(r"\b(api|health|up)\b", text):
            urls = [self.health_url]
        calls += [("http_check", {"url": url.rstrip(".,)")}) for url in urls]
        runbooks = [p for p in list_runbooks(self.runbooks_dir) if p.suffix in RUNNABLE]
        # A runbook matches by its full name or its first, distinctive word ("disk" for disk-usage), never by a
        # word many share ("usage").
        matched = [
            p.stem for p in runbooks if p.stem in text or re.search(rf"\b{re.escape(p.stem.split('-')[0])}\b", text)
        ]
        calls += [("run_runbook", {"name": name}) for name in matched]
        search = re.search(r"search (?:the )?runbooks? (?:for )?(.+)", request, re.IGNORECASE)
        if search or ("runbook" in text and not matched):
            calls.append(("search_runbooks", {"query": (search.group(1) if search else request).strip()}))
        if not calls and _channel(request):
            calls.append(("post_message", {"channel": _channel(request), "text": request}))
        return calls


def _current_turn(messages: list[BaseMessage]) -> tuple[str, list[ToolMessage]]:
    request = ""
    results: list[ToolMessage] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            request, results = str(message.content), []
        elif isinstance(message, ToolMessage):
            results.append(message)
    return request, results


def _channel(request: str) -> str | None:
    match = re.search(r"(?:<#\w+\|)?#([\w-]+)", request)
    return f"#{match.group(1)}" if match else None


def _summary(results: list[ToolMessage]) -> str:
    lines = []
    for message in results:
        output = [line.rstrip() for line in str(message.content).strip().splitlines() if line.strip()]
        first = output[0] if output else "(no output)"
        if message.status != "error":
            lines.append(f"- {message.name}: ok: {first}")
        elif first.startswith("Rejected"):  # our own rejection text: who is on the progress message already
            reason = first.partition(" Reason: ")[2]
            lines.append(f"- {message.name}: rejected" + (f" ({reason})" if reason else ""))
            continue
        else:
            lines.append(f"- {message.name}: failed: {first.removeprefix(f'{message.name} failed: ')}")
        details = [line for line in output[1:] if not line.startswith("==")][:3]
        lines += [f"↳ {line}" for line in details]
    return "\n".join(lines)


def _tool_calls(calls: list[tuple[str, dict[str, Any]]]) -> AIMessage:
    return AIMessage(
        content=f"{OFFLINE_LABEL} Planned {len(calls)} tool call(s).",
        tool_calls=[
            {"name": n, "args": a, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"} for n, a in calls
        ],
    )
