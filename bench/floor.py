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
import time
import uuid
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
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(runbook),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), CYCLE_TIMEOUT_S)
        return {"output": output.decode(errors="replace").strip()}

    graph = StateGraph(FloorState)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_node("execute", execute)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "execute")
    graph.add_edge("execute", END)
    return graph.compile(checkpointer=saver)


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
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(runbooks / f"{call['args']['name']}.sh"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), CYCLE_TIMEOUT_S)
        return {"messages": [ToolMessage(output.decode(errors="replace").strip(), tool_call_id=call["id"])]}

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


async def bare_langgraph_cycles(
    redis_url: str, runbook: Path, cycles: int, meter: RedisMeter | None = None
) -> list[CycleSample]:
    """`cycles` approval cycles on bare LangGraph + AsyncRedisSaver (after a short warm-up); with `meter`, through
    it (`redis_url` is then the meter's)."""
    saver = AsyncRedisSaver(redis_url=redis_url, ttl=TTL)
    await saver.asetup()
    try:
        graph = floor_graph(saver, runbook)
        samples = []
        for n in range(WARMUP_CYCLES + cycles):
            config: RunnableConfig = {"configurable": {"thread_id": f"bench-floor-{uuid.uuid4().hex}"}}
            clock = _Clock(meter)
            paused = await asyncio.wait_for(
                graph.ainvoke({"task": RECORD_TASK}, config, durability="sync"), CYCLE_TIMEOUT_S
            )
            if "__interrupt__" not in paused:
                raise RuntimeError(f"the floor graph did not pause for review: {paused}")
            clock.pause()
            done = await asyncio.wait_for(
                graph.ainvoke(Command(resume={"type": "approve"}), config, durability="sync"), CYCLE_TIMEOUT_S
            )
            if not str(done.get("output", "")).startswith("recorded"):
                raise RuntimeError(f"the floor graph did not run the runbook: {done}")
            if n >= WARMUP_CYCLES:
                samples.append(clock.sample())
        return samples
    finally:
        await saver.__aexit__(None, None, None)


async def model_floor_cycles(
    redis_url: str, model_url: str, runbooks: Path, cycles: int, meter: RedisMeter | None = None
) -> list[CycleSample]:
    """`cycles` approval cycles on bare LangGraph + AsyncRedisSaver + ChatOpenAI (`model_floor_graph`), streaming
    updates and tokens as an app showing progress does."""
    saver = AsyncRedisSaver(redis_url=redis_url, ttl=TTL)
    await saver.asetup()
    try:
        graph = model_floor_graph(saver, runbooks, model_url)

        async def run(graph_input: Any, config: RunnableConfig) -> list[BaseMessage]:
            async def stream() -> None:
                async for _ in graph.astream(
                    graph_input, config, stream_mode=["updates", "messages"], durability="sync"
                ):
                    pass

            await asyncio.wait_for(stream(), CYCLE_TIMEOUT_S)
            state = await graph.aget_state(config)
            return list(state.values.get("messages", []))

        samples = []
        for n in range(WARMUP_CYCLES + cycles):
            config: RunnableConfig = {"configurable": {"thread_id": f"bench-model-floor-{uuid.uuid4().hex}"}}
            clock = _Clock(meter)
            planned = await run({"messages": [HumanMessage(RECORD_TASK)]}, config)
            if not (isinstance(planned[-1], AIMessage) and planned[-1].tool_calls):
                raise RuntimeError(f"the model floor did not pause for review: {planned[-1]}")
            clock.pause()
            done = await run(Command(resume={"type": "approve"}), config)
            if not (isinstance(done[-1], AIMessage) and not done[-1].tool_calls and len(done) == 4):
                raise RuntimeError(f"the model floor did not report: {done[-1]}")
            if n >= WARMUP_CYCLES:
                samples.append(clock.sample())
        return samples
    finally:
        await saver.__aexit__(None, None, None)


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
    samples = []
    async with open_runtime(settings) as runtime:
        for n in range(WARMUP_CYCLES + cycles):
            thread_id = f"bench-runs-{uuid.uuid4().hex[:12]}"
            clock = _Clock(meter)
            paused = await asyncio.wait_for(
                runtime.runs.start(thread_id, RECORD_TASK, requester=REQUESTER), CYCLE_TIMEOUT_S
            )
            if paused.status != "waiting" or paused.pending is None:
                raise RuntimeError(f"the Runs layer did not pause for review: {paused}")
            clock.pause()
            done = await asyncio.wait_for(
                runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve()], decided_by=APPROVER),
                CYCLE_TIMEOUT_S,
            )
            if done.status != "done":
                raise RuntimeError(f"the Runs layer did not finish: {done}")
            if n >= WARMUP_CYCLES:
                samples.append(clock.sample())
    return samples
