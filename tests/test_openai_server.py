"""The scripted OpenAI server, driven by the real ChatOpenAI client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from sandbox.openai_server import RESPONSES_API_MESSAGE, ScriptedOpenAI, rule

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0  # seconds; every await below is bounded by it


@tool
def http_check(url: str) -> str:
    """Check that a URL answers."""
    return "200 OK"


@tool
def disk_usage(host: str, mount: str = "/") -> str:
    """Report disk usage of a mount on a host."""
    return "91%"


@tool
def run_runbook(name: str, dry_run: bool) -> str:
    """Run a named runbook."""
    return "done"


TOOLS = [http_check, disk_usage, run_runbook]
THREE_CALLS = [
    {"name": "http_check", "args": {"url": "https://status.example.com"}},
    {"name": "disk_usage", "args": {"host": "db-1", "mount": "/var"}},
    {"name": "run_runbook", "args": {"name": "clean-tmp", "dry_run": True}},
]


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as s:
        yield s


def llm(server: ScriptedOpenAI, **kwargs: Any) -> ChatOpenAI:
    options: dict[str, Any] = {"max_retries": 0, "timeout": WAIT, "use_responses_api": False, **kwargs}
    return ChatOpenAI(base_url=server.base_url, api_key=SecretStr("test-key"), model="scripted", **options)


async def collect(stream: AsyncIterator[Any]) -> list[AIMessageChunk]:
    """The chunks a chat model streams (typed as messages once tools are bound, but chunks all the same)."""

    async def drain() -> list[AIMessageChunk]:
        return [chunk async for chunk in stream]

    return await asyncio.wait_for(drain(), WAIT)


def aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


async def test_streamed_text_arrives_in_several_chunks(server: ScriptedOpenAI) -> None:
    text = "Disk on db-1 is at 91%, mostly /var/log."
    server.add_rule(rule({"text": text}, last_user_contains="DISK"))

    chunks = await collect(llm(server).astream("how is the disk on db-1?"))

    pieces = [str(c.content) for c in chunks if c.content]
    assert len(pieces) >= 5
    assert "".join(pieces) == text
    assert server.requests[0]["stream"] is True


async def test_back_to_back_streams_on_one_connection_arrive_whole_and_in_order(server: ScriptedOpenAI) -> None:
    # One kept-alive connection, as ChatOpenAI's pool uses it: every reply's chunks in order, each ended by [DONE].
    server.add_rule(rule({"text": "one two three four five six seven"}))
    auth = {"Authorization": "Bearer test-key"}
    request = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "count"}]}
    replies: list[list[str]] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT) as client:
        for _ in range(5):
            async with client.stream("POST", "/chat/completions", json=request, headers=auth) as response:
                replies.append([line.removeprefix("data: ") async for line in response.aiter_lines() if line])

    for events in replies:
        assert events[-1] == "[DONE]"
        deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
        assert "".join(d.get("content") or "" for d in deltas) == "one two three four five six seven"
        assert [d.get("content") for d in deltas[1:8]] == ["one ", "two ", "three ", "four ", "five ", "six ", "seven"]


async def test_streamed_reply_with_three_tool_calls(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"text": "Checking.", "tool_calls": THREE_CALLS}))

    message = aggregate(await collect(llm(server).bind_tools(TOOLS).astream("check everything")))

    assert [(c["name"], c["args"]) for c in message.tool_calls] == [(c["name"], c["args"]) for c in THREE_CALLS]
    ids = [c["id"] for c in message.tool_calls]
    assert len(set(ids)) == 3 and all(i and i.startswith("call_") for i in ids)
    assert message.content == "Checking."
    assert message.response_metadata["finish_reason"] == "tool_calls"
    sent_tools = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert sent_tools == ["http_check", "disk_usage", "run_runbook"]


async def test_non_streamed_tool_calls_keep_given_ids(server: ScriptedOpenAI) -> None:
    calls = [{**THREE_CALLS[0], "id": "call_fixed01"}, THREE_CALLS[1]]
    server.add_rule(rule({"tool_calls": calls}))

    message = await asyncio.wait_for(llm(server).bind_tools(TOOLS).ainvoke("check"), WAIT)

    assert isinstance(message, AIMessage)
    assert [c["name"] for c in message.tool_calls] == ["http_check", "disk_usage"]
    assert message.tool_calls[0]["id"] == "call_fixed01"
    assert message.tool_calls[1]["args"] == {"host": "db-1", "mount": "/var"}
    assert message.usage_metadata and message.usage_metadata["total_tokens"] > 0
    assert server.requests[0]["stream"] is False


async def test_rules_follow_the_conversation(server: ScriptedOpenAI) -> None:
    server.reset(
        [
            rule({"text": "Runbook was rejected, nothing changed."}, last_tool_contains="REJECTED"),
            rule({"text": "clean-tmp finished."}, last_tool_name="run_runbook"),
            rule({"tool_calls": [THREE_CALLS[2]]}, has_tool_results=False, last_user_contains="clean"),
        ]
    )
    model = llm(server).bind_tools(TOOLS)
    history: list[BaseMessage] = [HumanMessage("please clean tmp on db-1")]

    first = await asyncio.wait_for(model.ainvoke(history), WAIT)
    call_id = first.tool_calls[0]["id"]
    done = [*history, first, ToolMessage("exit 0", tool_call_id=call_id)]
    second = await asyncio.wait_for(model.ainvoke(done), WAIT)
    refused = [*history, first, ToolMessage("Rejected by @alice", tool_call_id=call_id)]
    third = await asyncio.wait_for(model.ainvoke(refused), WAIT)

    assert first.tool_calls[0]["name"] == "run_runbook"
    assert second.content == "clean-tmp finished." and not second.tool_calls
    assert third.content == "Runbook was rejected, nothing changed."
    assert server.unmatched == []


async def test_unscripted_prompt_fails_loudly(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"text": "disk is fine"}, last_user_contains="disk"))

    with pytest.raises(openai.BadRequestError, match="no rule matches") as caught:
        await asyncio.wait_for(llm(server, max_retries=2).ainvoke("restart the world"), WAIT)

    assert "restart the world" in str(caught.value)
    assert len(server.requests) == 1, "a 400 must not be retried"
    assert [r["messages"][-1]["content"] for r in server.unmatched] == ["restart the world"]


async def test_rate_limit_is_retried_once(server: ScriptedOpenAI) -> None:
    server.reset([rule({"fault": {"status": 429, "retry_after": 0.05}}, times=1), rule({"text": "after the limit"})])

    message = await asyncio.wait_for(llm(server, max_retries=1).ainvoke("hello"), WAIT)

    assert message.content == "after the limit"
    assert len(server.requests) == 2


async def test_rate_limit_without_retries_raises(server: ScriptedOpenAI) -> None:
    server.reset([rule({"fault": {"status": 429, "retry_after": 1}}, times=1), rule({"text": "unused"})])

    with pytest.raises(openai.RateLimitError):
        await asyncio.wait_for(llm(server).ainvoke("hello"), WAIT)
    assert len(server.requests) == 1


async def test_server_error_fault(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"fault": {"status": 500}}))

    with pytest.raises(openai.InternalServerError):
        await asyncio.wait_for(llm(server).ainvoke("hello"), WAIT)


async def test_cut_stream_raises_instead_of_truncating(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"text": "one two three four five six", "cut_after_chunks": 3, "chunk_delay": 0.01}))
    seen: list[str] = []

    # The stream is chunked-encoded like api.openai.com, so the drop is an incomplete body, which ChatOpenAI raises
    # mid-iteration as an openai.APIConnectionError. The client never checks for [DONE]: a body that ended cleanly
    # without it (Connection: close, no chunking) was verified to yield a silently truncated 'one two ' instead.
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in llm(server).astream("count"):
            seen.append(str(chunk.content))

    # openai 3.x talks through `httpx2` (a fork), so match the transport error by name rather than by httpx class.
    causes: list[str] = []
    error: BaseException | None = caught.value
    while error is not None:
        causes.append(type(error).__name__)
        error = error.__cause__
    assert "RemoteProtocolError" in causes, causes
    assert "".join(seen) == "one two "  # the role chunk plus two words got through before the cut


async def test_responses_api_is_refused_loudly(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"text": "unused"}))

    with pytest.raises(openai.BadRequestError, match="use_responses_api=False"):
        await asyncio.wait_for(llm(server, use_responses_api=True).ainvoke("hello"), WAIT)
    assert server.requests == []


async def test_http_surface(server: ScriptedOpenAI) -> None:
    server.add_rule(rule({"text": "hi"}, model="gpt-scripted-2"))
    auth = {"Authorization": "Bearer test-key"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT) as client:
        no_auth = await client.post("/chat/completions", json={"model": "scripted", "messages": []})
        responses = await client.post("/responses", json={"model": "scripted", "input": "hi"}, headers=auth)
        models = await client.get("/models", headers=auth)
        one_model = await client.get("/models/anything", headers=auth)
        unknown = await client.post("/embeddings", json={}, headers=auth)
        usage_stream = await client.post(
            "/chat/completions",
            headers=auth,
            json={
                "model": "gpt-scripted-2",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}],
            },
        )

    assert no_auth.status_code == 401 and no_auth.json()["error"]["code"] == "invalid_api_key"
    assert responses.status_code == 400 and responses.json()["error"]["message"] == RESPONSES_API_MESSAGE
    assert [m["id"] for m in models.json()["data"]] == ["scripted", "gpt-scripted-2"]
    assert one_model.json()["id"] == "anything"
    assert unknown.status_code == 404 and "unknown endpoint" in unknown.json()["error"]["message"]
    assert usage_stream.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in usage_stream.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_bad_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="when"):
        ScriptedOpenAI([{"when": {"last_user_contain": "typo"}, "reply": {"text": "x"}}])
    with pytest.raises(ValueError, match="reply"):
        ScriptedOpenAI([{"when": {}, "reply": {"chunk_delay": 0.1}}])


def test_cli_serves_a_script_file(tmp_path: Path) -> None:
    script = tmp_path / "rules.json"
    script.write_text(json.dumps([{"when": {"last_user_contains": "ping"}, "reply": {"text": "pong"}}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.openai_server", "--script", str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(3 * WAIT, proc.kill)  # readline() below has no timeout of its own
    watchdog.start()
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()  # the CLI prints its URL first, then serves
        assert base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=WAIT)
        answer = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "ping"}])
        assert answer.choices[0].message.content == "pong"
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=WAIT)
