"""The floor: the same approval cycle on bare LangGraph + AsyncRedisSaver, and on the core `Runs` layer alone.

A cycle is: run the graph until it pauses for review (``interrupt()``), then resume it with an approval and
run the approved call (the ``record.sh`` runbook) to the end. All use ``durability="sync"`` against the same
Redis as the bot, so the bot's cycle time over these shows what Slack, Bolt and the bot's own layers add.

Two floors: the minimum (the plan step proposes the call itself, no model), and the same graph asking a model
as the Runs layer does (``ChatOpenAI`` with the same tool schemas, streamed, once to plan and once to report, against
the same scripted server): what any LangGraph agent with a model and human review pays before the project's own code.

Each cycle also records the CPU this process spent on it, and, when the cycles run through a `RedisMeter`
(bench.redis_meter), the Redis round trips, commands and bytes it cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt
from pydantic import SecretStr

from graphs.builtin_tools import build_registry
from graphs.redaction import child_env
from graphs.runtime import open_runtime
from graphs.settings import CoreSettings
from graphs.types import approve

from .harness import APPROVER, RECORD_TASK, REQUESTER
from .redis_meter import RedisMeter, Traffic

TTL = {"default_ttl": 7 * 24 * 60, "refresh_on_read": True}  # what the bot's runtime configures
WARMUP_CYCLES = 2
CYCLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CycleSample:
    """One cycle, in milliseconds: until the pause, from the resume to the end, and both; the CPU this process
    used meanwhile; and the Redis traffic, when the cycle ran through a meter."""

    to_pause_ms: float
    resume_ms: float
    cpu_ms: float = 0.0
    traffic: Traffic | None = None

    @property
    def total_ms(self) -> float:
        return self.to_pause_ms + self.resume_ms


class FloorState(TypedDict, total=False):
    task: str
    call: dict[str, Any]
    decision: str
    output: str


def floor_graph(saver: AsyncRedisSaver, runbook: Path) -> CompiledStateGraph:
    """plan -> review (interrupt) -> execute: the minimum an approval cycle needs."""

    def plan(state: FloorState) -> dict[str, Any]:
        return {"call": {"name": "run_runbook", "args": {"name": runbook.stem}}}

    def review(state: FloorState) -> dict[str, Any]:
        answer = interrupt({"action_requests": [state["call"]]})
        return {"decision": answer["type"]}

    async def execute(state: FloorState) -> dict[str, Any]:
        if state.get("decision") != "approve":
            return {"output": "rejected"}
        return {"output": await _run_runbook(runbook)}

    graph = StateGraph(FloorState)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_node("execute", execute)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "execute")
    graph.add_edge("execute", END)
    return graph.compile(checkpointer=saver)


async def _run_runbook(script: Path) -> str:
    """The approved call of every floor: the runbook as a process, with the plain environment the bot gives one."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(os.environ),
    )
    output, _ = await asyncio.wait_for(process.communicate(), CYCLE_TIMEOUT_S)
    return output.decode(errors="replace").strip()


class ModelFloorState(MessagesState, total=False):
    decision: str


def model_floor_graph(saver: AsyncRedisSaver, runbooks: Path, model_url: str) -> CompiledStateGraph:
    """plan (the model proposes the call) -> review (interrupt) -> execute -> report (the model again)."""
    tools = build_registry(runbooks).langchain_tools()  # the schemas only: what the model is shown
    model = ChatOpenAI(
        model="scripted",
        base_url=model_url,
        api_key=SecretStr("bench-key"),
        use_responses_api=False,
        streaming=True,
    ).bind_tools(tools)
    system = SystemMessage("You are an operations assistant. Propose tool calls; a person approves them.")

    async def plan(state: ModelFloorState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke([system, *state["messages"]])]}

    def review(state: ModelFloorState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage) and last.tool_calls, "the scripted model proposes the runbook"
        answer = interrupt({"action_requests": last.tool_calls})
        return {"decision": answer["type"]}

    async def execute(state: ModelFloorState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        call = last.tool_calls[0]
        output = await _run_runbook(runbooks / f"{call['args']['name']}.sh")
        return {"messages": [ToolMessage(output, tool_call_id=call["id"])]}

    graph = StateGraph(ModelFloorState)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_node("execute", execute)
    graph.add_node("report", plan)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "execute")
    graph.add_edge("execute", "report")
    graph.add_edge("report", END)
    return graph.compile(checkpointer=saver)


class _Clock:
    """Wall time, CPU time and (with a meter) Redis traffic at the start of a cycle and at its pause."""

    def __init__(self, meter: RedisMeter | None) -> None:
        self.meter = meter
        self.started = time.perf_counter()
        self.cpu = time.process_time()
        self.traffic = meter.reading() if meter else None
        self.paused = self.started

    def pause(self) -> None:
        self.paused = time.perf_counter()

    def sample(self) -> CycleSample:
        finished = time.perf_counter()
        traffic = self.meter.reading() - self.traffic if self.meter and self.traffic else None
        return CycleSample(
            (self.paused - self.started) * 1000,
            (finished - self.paused) * 1000,
            (time.process_time() - self.cpu) * 1000,
            traffic,
        )


async def _timed_cycles(
    cycles: int,
    meter: RedisMeter | None,
    prefix: str,
    to_pause: Callable[[str], Awaitable[None]],
    to_end: Callable[[str], Awaitable[None]],
) -> list[CycleSample]:
    """`cycles` cycles (after a short warm-up), each on a new thread: `to_pause` runs it until it waits for review,
    `to_end` approves and runs it to the end; each raises if the cycle did not go so."""
    samples = []
    for n in range(WARMUP_CYCLES + cycles):
        thread_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        clock = _Clock(meter)
        await asyncio.wait_for(to_pause(thread_id), CYCLE_TIMEOUT_S)
        clock.pause()
        await asyncio.wait_for(to_end(thread_id), CYCLE_TIMEOUT_S)
        if n >= WARMUP_CYCLES:
            samples.append(clock.sample())
    return samples


@contextlib.asynccontextmanager
async def _saver(redis_url: str) -> AsyncIterator[AsyncRedisSaver]:
    saver = AsyncRedisSaver(redis_url=redis_url, ttl=TTL)
    await saver.asetup()
    try:
        yield saver
    finally:
        await saver.__aexit__(None, None, None)


def _thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


async def bare_langgraph_cycles(
    redis_url: str, runbook: Path, cycles: int, meter: RedisMeter | None = None
) -> list[CycleSample]:
    """`cycles` approval cycles on bare LangGraph + AsyncRedisSaver; with `meter`, through it (`redis_url` is then
    the meter's)."""
    async with _saver(redis_url) as saver:
        graph = floor_graph(saver, runbook)

        async def to_pause(thread_id: str) -> None:
            paused = await graph.ainvoke({"task": RECORD_TASK}, _thread(thread_id), durability="sync")
            if "__interrupt__" not in paused:
                raise RuntimeError(f"the floor graph did not pause for review: {paused}")

        async def to_end(thread_id: str) -> None:
            done = await graph.ainvoke(Command(resume={"type": "approve"}), _thread(thread_id), durability="sync")
            if not str(done.get("output", "")).startswith("recorded"):
                raise RuntimeError(f"the floor graph did not run the runbook: {done}")

        return await _timed_cycles(cycles, meter, "bench-floor", to_pause, to_end)


async def model_floor_cycles(
    redis_url: str, model_url: str, runbooks: Path, cycles: int, meter: RedisMeter | None = None
) -> list[CycleSample]:
    """`cycles` approval cycles on bare LangGraph + AsyncRedisSaver + ChatOpenAI (`model_floor_graph`), streaming
    updates and tokens as an app showing progress does."""
    async with _saver(redis_url) as saver:
        graph = model_floor_graph(saver, runbooks, model_url)

        async def run(graph_input: Any, thread_id: str) -> list[BaseMessage]:
            config = _thread(thread_id)
            async for _ in graph.astream(graph_input, config, stream_mode=["updates", "messages"], durability="sync"):
                pass
            state = await graph.aget_state(config)
            return list(state.values.get("messages", []))

        async def to_pause(thread_id: str) -> None:
            planned = await run({"messages": [HumanMessage(RECORD_TASK)]}, thread_id)
            if not (isinstance(planned[-1], AIMessage) and planned[-1].tool_calls):
                raise RuntimeError(f"the model floor did not pause for review: {planned[-1]}")

        async def to_end(thread_id: str) -> None:
            done = await run(Command(resume={"type": "approve"}), thread_id)
            if not (isinstance(done[-1], AIMessage) and not done[-1].tool_calls and len(done) == 4):
                raise RuntimeError(f"the model floor did not report: {done[-1]}")

        return await _timed_cycles(cycles, meter, "bench-model-floor", to_pause, to_end)


async def runs_layer_cycles(
    redis_url: str, model_url: str, runbooks: Path, cycles: int, meter: RedisMeter | None = None
) -> list[CycleSample]:
    """`cycles` approval cycles through `graphs.runs.Runs` (the bot's core, no Slack) with the scripted model; with
    `meter`, through it (`redis_url` is then the meter's)."""
    settings = CoreSettings(
        redis_url=redis_url,
        openai_base_url=model_url,
        openai_api_key="bench-key",
        model="scripted",
        runbooks_dir=runbooks,
        runbook_timeout_s=CYCLE_TIMEOUT_S,
        key_prefix=f"benchruns{uuid.uuid4().hex[:8]}:",
    )
    async with open_runtime(settings) as runtime:
        waiting: dict[str, str] = {}  # thread -> the interrupt its review waits on

        async def to_pause(thread_id: str) -> None:
            paused = await runtime.runs.start(thread_id, RECORD_TASK, requester=REQUESTER)
            if paused.status != "waiting" or paused.pending is None:
                raise RuntimeError(f"the Runs layer did not pause for review: {paused}")
            waiting[thread_id] = paused.pending.interrupt_id

        async def to_end(thread_id: str) -> None:
            done = await runtime.runs.resume(thread_id, waiting.pop(thread_id), [approve()], decided_by=APPROVER)
            if done.status != "done":
                raise RuntimeError(f"the Runs layer did not finish: {done}")

        return await _timed_cycles(cycles, meter, "bench-runs", to_pause, to_end)
