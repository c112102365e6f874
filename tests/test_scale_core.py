"""The core at scale: a long thread's footprint in Redis, what a history costs, Redis round trips per approval
cycle, connection pools under a burst, and runs that fail for any reason.

Sizes are guarantees measured with Redis's own ``MEMORY USAGE``; round trips are printed (``pytest -s``) and bounded
only generously (the benchmark owns the numbers).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.types import Command
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.floor import floor_graph
from bench.redis_meter import RedisMeter, Traffic
from graphs.checkpoints import CompactRedisSaver
from graphs.history import describe
from graphs.runtime import open_runtime
from graphs.types import Failed, approve, reject
from sandbox.openai_server import rule

from .conftest import settings_for

TURNS = 30
MAX_THREAD_BYTES = 1_000_000  # a 30-turn thread, everything it keeps in Redis


def script_search(model) -> None:
    """Every task: one auto call (search_runbooks, read-only: no review waits), then an answer."""
    model.reset(
        [
            rule(
                {"text": "Searching.", "tool_calls": [{"name": "search_runbooks", "args": {"query": "disk"}}]},
                has_tool_results=False,
            ),
            rule({"text": "Found the disk notes."}, has_tool_results=True),
        ]
    )


def script_record(model) -> None:
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}]}, has_tool_results=False),
            rule({"text": "Recorded."}, has_tool_results=True),
        ]
    )


async def thread_bytes(redis: Redis, thread_id: str) -> tuple[int, int]:
    """What a thread keeps in Redis, all key types together (checkpoints, writes, registries, stored values, the
    run index, history lines, ledger): bytes by MEMORY USAGE, and the number of keys."""
    total = keys = 0
    async for key in redis.scan_iter(match=f"*{thread_id}*", count=1000):
        total += await redis.memory_usage(key, samples=0) or 0
        keys += 1
    return total, keys


def user_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_a_thirty_turn_thread_grows_linearly_keeps_its_approval_points_and_rewinds_to_an_old_one(
    redis_url, model, runbooks, thread_id
):
    script_search(model)
    sizes: dict[int, int] = {}
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        for turn in range(1, TURNS + 1):
            done = await rt.runs.start(thread_id, f"task {turn}: search the runbooks for disk")
            assert done.status == "done", done
            if turn in (1, 10, 20, 30):
                sizes[turn], keys = await thread_bytes(rt.redis, thread_id)
                print(f"turn {turn}: {sizes[turn] / 1024:.0f} KB in {keys} keys")

        assert sizes[TURNS] <= MAX_THREAD_BYTES, sizes
        # Linear: the last ten turns cost about what the ten before them did (quadratic storage would be 5/3 as much).
        assert sizes[30] - sizes[20] <= 1.3 * (sizes[20] - sizes[10]), sizes

        history = await rt.runs.history(thread_id)
        points = [c for c in history if c.next == ("review",)]
        assert len(points) == TURNS  # one approval point per task, the old ones too
        assert [c.summary for c in points] == ["the model proposed search_runbooks(query=disk)"] * TURNS
        assert len(history) <= TURNS + 10  # plus the latest task's other checkpoints
        assert [c.step for c in history] == sorted((c.step for c in history), reverse=True)
        assert (await rt.runs.history(thread_id, limit=5)) == history[:5]

        # Rewind to the third task's approval point: the conversation is what it was then, and runs on from there.
        third = points[-3]
        assert (await rt.runs.rewind_target(thread_id, third.checkpoint_id[-8:])) == third
        rewound = await rt.runs.rewind(thread_id, third.checkpoint_id, by="U_ADMIN")
        assert rewound.status == "done" and rewound.report == "Found the disk notes."
        assert user_messages(model.requests[-1]) == [f"task {n}: search the runbooks for disk" for n in (1, 2, 3)]
        # ... and the next task carries on from the rewound conversation, with the old approval points still there.
        follow_up = await rt.runs.start(thread_id, "task 31: search the runbooks for disk")
        assert follow_up.status == "done"
        assert len(user_messages(model.requests[-1])) == 4
        after = await rt.runs.history(thread_id)
        assert {c.checkpoint_id for c in points} <= {c.checkpoint_id for c in after}
        assert (await thread_bytes(rt.redis, thread_id))[0] <= MAX_THREAD_BYTES


async def test_history_lines_kept_while_running_say_what_the_checkpoints_say(
    redis_url, model, runbooks, health_url, thread_id
):
    """The lines written from the graph's stream equal those described from the checkpoints themselves: across a
    pause with read-only calls run first, a decision, a follow-up task, a rewind and a cancel."""
    calls = [
        {"name": "http_check", "args": {"url": f"{health_url}/health"}},
        {"name": "run_runbook", "args": {"name": "disk-usage"}},
        {"name": "post_message", "args": {"channel": "#ops", "text": "disk 42%"}},
    ]
    model.reset(
        [
            rule({"text": "Checking.", "tool_calls": calls}, has_tool_results=False),
            rule({"text": "All done."}, has_tool_results=True),
        ]
    )
    settings = settings_for(redis_url, model, runbooks, http_allow=f"{health_url}/")
    async with open_runtime(settings) as rt:
        runs = rt.runs
        paused = await runs.start(thread_id, "check the API and the disk, post it")
        await runs.resume(thread_id, paused.pending.interrupt_id, [approve(), reject("no")], decided_by="U_BOSS")
        again = await runs.start(thread_id, "once more: check the API and the disk, post it")
        rewound = await runs.rewind(thread_id, by="U_ADMIN")
        assert again.status == rewound.status == "waiting"
        await runs.cancel(thread_id, by="U_ADMIN")

        kept = await runs.history(thread_id)
        snapshots = [
            s
            async for s in runs.graph.aget_state_history({"configurable": {"thread_id": thread_id}})
            if s.config["configurable"].get("checkpoint_ns", "") == ""
        ]
        described = [describe(s) for s in snapshots]
        assert [c.checkpoint_id for c in kept] == [c.checkpoint_id for c in described]
        for line, truth in zip(kept, described, strict=True):
            assert {**line.__dict__, "created_at": None} == {**truth.__dict__, "created_at": None}
            gap = datetime.fromisoformat(line.created_at) - datetime.fromisoformat(truth.created_at)
            assert abs(gap.total_seconds()) < 0.05
        assert sum(c.stage == "waiting for approval" for c in kept) == 3
        assert kept[0].summary == "ended, cancelled: Cancelled by U_ADMIN"


async def test_a_checkpoint_is_read_back_exactly_as_written(redis_url, model, runbooks, thread_id):
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        paused = await rt.runs.start(thread_id, "record it")
        await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
        await rt.runs.start(thread_id, "record it again")
        saver = rt.runs.graph.checkpointer
        assert isinstance(saver, CompactRedisSaver)
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        latest = await saver.aget_tuple(config)
        listed = next(iter([t async for t in saver.alist(config, limit=1)]))
        assert latest is not None and latest.config == listed.config
        assert latest.checkpoint["channel_values"] == listed.checkpoint["channel_values"]
        messages = latest.checkpoint["channel_values"]["messages"]
        assert [type(m).__name__ for m in messages][:2] == ["HumanMessage", "AIMessage"]
        # Stored once: the thread's values hash holds each message (and review) a single time, whatever number of
        # checkpoints show it; a checkpoint holds references.
        raw = await saver._redis.json().get(
            saver._make_redis_checkpoint_key(thread_id, "", latest.config["configurable"]["checkpoint_id"])
        )
        assert set(raw["checkpoint"]["channel_values"]["messages"]) == {"__chatops_refs__"}
        stored = await saver._redis.hlen(saver.values_key(thread_id))
        assert len(messages) <= stored <= len(messages) + 8
        await saver.adelete_thread(thread_id)
        assert await saver._redis.exists(saver.values_key(thread_id)) == 0
        assert await saver.aget_tuple(config) is None


async def test_a_process_holds_nothing_per_checkpoint_it_wrote(redis_url, model, runbooks, thread_id):
    """A bot with a thousand waiting cards must not grow by what it wrote for them: the stock saver caches every
    checkpoint and write key it builds (10,000 never evicted, ~2 KB per run); this saver keeps none (what it remembers
    is the references stored per thread, for a bounded number of threads)."""
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        saver = rt.runs.graph.checkpointer
        assert isinstance(saver, CompactRedisSaver)
        for n in range(3):
            paused = await rt.runs.start(f"{thread_id}-{n}", "record it")
            await rt.runs.resume(f"{thread_id}-{n}", paused.pending.interrupt_id, [approve()])
        assert saver._key_cache == {}
        assert sorted(saver._stored) == [f"{thread_id}-{n}" for n in range(3)]


async def test_values_lost_under_a_running_graph_are_stored_again(redis_url, model, runbooks, thread_id):
    """Redis loses the thread's stored values (a restart without persistence) while its graph runs: the next
    checkpoint stores again everything it refers to, so the run ends readable."""
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "slow"}}]}, has_tool_results=False),
            rule({"text": "Slow one done."}, has_tool_results=True),
        ]
    )
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        saver = rt.runs.graph.checkpointer
        paused = await rt.runs.start(thread_id, "run the slow runbook")
        resume = asyncio.create_task(rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()]))
        for _ in range(200):  # until the tool runs
            if runbooks.executions("slow"):
                break
            await asyncio.sleep(0.05)
        assert await saver._redis.delete(saver.values_key(thread_id)) == 1
        done = await resume
        assert done.status == "done" and done.report == "Slow one done."
        state = await rt.runs.graph.aget_state({"configurable": {"thread_id": thread_id}})
        assert [type(m).__name__ for m in state.values["messages"]] == [
            "HumanMessage",
            "AIMessage",
            "ToolMessage",
            "AIMessage",
        ]


# --- round trips ---------------------------------------------------------------------------------------------------
# Counted by the benchmark's own meter (bench/redis_meter.py: a TCP proxy that counts round trips and commands) on
# the benchmark's floor graph (bench/floor.py); `make bench` prints the same numbers as a table row.


async def per_cycle(meter: RedisMeter, cycles: int, cycle: Any) -> Traffic:
    await cycle()  # warm-up: connections opened, indexes known
    before = meter.reading()
    for _ in range(cycles):
        await cycle()
    spent = meter.reading() - before
    return Traffic(
        spent.round_trips // cycles, spent.commands // cycles, spent.bytes_in // cycles, spent.bytes_out // cycles
    )


async def test_an_approval_cycle_costs_at_most_twice_the_round_trips_of_bare_langgraph(
    redis_url, model, runbooks, thread_id
):
    """Round trips per cycle (start until the review, resume until done) for bare LangGraph + AsyncRedisSaver as
    the bot configured it before, and for the Runs layer; the latter at most twice the former."""
    cycles = 5
    with RedisMeter(redis_url) as meter:
        saver = AsyncRedisSaver(redis_url=meter.url, ttl={"default_ttl": 7 * 24 * 60, "refresh_on_read": True})
        await saver.asetup()
        try:
            graph = floor_graph(saver, runbooks.dir / "record.sh")

            async def bare_cycle() -> None:
                config: RunnableConfig = {"configurable": {"thread_id": f"floor-{uuid.uuid4().hex}"}}
                assert "__interrupt__" in await graph.ainvoke({"task": "x"}, config, durability="sync")
                await graph.ainvoke(Command(resume={"type": "approve"}), config, durability="sync")

            floor = await per_cycle(meter, cycles, bare_cycle)
        finally:
            await saver.__aexit__(None, None, None)

        script_record(model)
        async with open_runtime(settings_for(meter.url, model, runbooks)) as rt:

            async def runs_cycle() -> None:
                thread = f"{thread_id}-{uuid.uuid4().hex[:8]}"
                paused = await rt.runs.start(thread, "record it", requester="U_ASK")
                done = await rt.runs.resume(thread, paused.pending.interrupt_id, [approve()], decided_by="U_OK")
                assert done.status == "done", done

            project = await per_cycle(meter, cycles, runs_cycle)
    for name, spent in (("bare LangGraph + AsyncRedisSaver", floor), ("Runs layer", project)):
        print(f"{name}: {spent.round_trips} round trips, {spent.commands} commands per cycle")
    assert project.round_trips <= 2 * floor.round_trips


# --- connection pools ----------------------------------------------------------------------------------------------


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(redis_url, model, runbooks):
    settings = settings_for(redis_url, model, runbooks, redis_max_connections=2, redis_pool_timeout_s=10.0)
    async with open_runtime(settings) as rt:
        saver = rt.runs.graph.checkpointer
        assert isinstance(saver, CompactRedisSaver)
        for client in (rt.redis, saver._redis):
            assert isinstance(client.connection_pool, BlockingConnectionPool)
            assert client.connection_pool.max_connections == 2
        # 20 calls that each hold a connection for 0.1 s, through a pool of 2: they queue, none fails.
        missing = f"missing-{uuid.uuid4().hex}"
        results = await asyncio.gather(*(rt.redis.blpop([missing], timeout=0.1) for _ in range(20)))
        assert results == [None] * 20


# --- runs that fail ------------------------------------------------------------------------------------------------


class FailOnce:
    """Replaces an async method: raises a Redis connection error on its first ``after``+1-th call, then passes."""

    def __init__(self, target: Any, name: str, after: int = 0) -> None:
        self.original = getattr(target, name)
        self.calls = 0
        self.after = after
        setattr(target, name, self)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.after + 1:
            raise RedisConnectionError("Redis went away (injected)")
        return await self.original(*args, **kwargs)


async def test_a_redis_error_mid_run_fails_the_run_and_closes_its_turn(redis_url, model, runbooks, thread_id):
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        saver = rt.runs.graph.checkpointer
        paused = await rt.runs.start(thread_id, "record it")
        FailOnce(saver, "aput", after=1)  # the resume's second checkpoint: after the tool ran, mid-run
        events: list[Any] = []

        async def on_event(event: Any) -> None:
            events.append(event)

        failed = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()], on_event=on_event)
        assert failed.status == "failed" and "Redis went away" in failed.error
        assert [e for e in events if isinstance(e, Failed)]
        info = await rt.runs.info(thread_id)
        assert info["status"] == "failed" and "Redis went away" in info["error"]
        assert thread_id not in await rt.runs._index.running()
        assert await rt.runs.pending_review(thread_id) is None
        # The turn is closed, with the result of the call that ran: a follow-up task runs on a well-formed
        # conversation, and nothing ran twice.
        state = await rt.runs.graph.aget_state({"configurable": {"thread_id": thread_id}})
        assert state.next == () and state.values["outcome"] == "failed"
        assert state.values["messages"][-1].content.endswith("recorded ok")
        again = await rt.runs.start(thread_id, "record it again")
        assert again.status == "waiting"
        assert len(runbooks.executions("record")) == 1


async def test_a_run_that_cannot_even_say_it_failed_is_settled_by_the_sweeper(redis_url, model, runbooks, thread_id):
    """Redis fails the graph and then the write saying so: the run stays listed as running, its lock free, and the
    sweeper's recover() carries it on to its end; never "running" with nobody to carry it on."""
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        runs = rt.runs
        paused = await runs.start(thread_id, "record it")
        FailOnce(runs.graph.checkpointer, "aput", after=1)
        FailOnce(runs, "_end")  # closing the turn fails (Redis) ...
        close = FailOnce(runs._index, "close")  # ... and so does marking it failed
        with pytest.raises(RedisConnectionError):
            await runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
        assert close.calls == 1
        assert (await runs.info(thread_id))["status"] == "running"
        assert thread_id in await runs.orphans()
        # The tool had run and its result was saved: carried on from there, the run ends as it would have.
        recovered = await runs.recover(thread_id)
        assert recovered is not None and recovered.status == "done" and recovered.report == "Recorded.", recovered
        assert (await runs.info(thread_id))["status"] == "done"
        assert thread_id not in await runs.orphans()
        assert len(runbooks.executions("record")) == 1


async def test_a_run_that_ended_before_its_process_said_so_is_settled_by_the_sweeper(
    redis_url, model, runbooks, thread_id
):
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        runs = rt.runs
        paused = await runs.start(thread_id, "record it")
        FailOnce(runs._index, "close")  # the graph ended; writing so in the run index fails
        with pytest.raises(RedisConnectionError):
            await runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
        assert thread_id in await runs.orphans()
        assert await runs.recover(thread_id) is None  # nothing left to run ...
        info = await runs.info(thread_id)
        assert info["status"] == "done" and info["report"] == "Recorded."  # ... and it says how it ended
        assert thread_id not in await runs.orphans()


async def test_a_run_whose_caller_is_cancelled_is_carried_on_by_the_sweeper(redis_url, model, runbooks, thread_id):
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "slow"}}]}, has_tool_results=False),
            rule({"text": "Slow one done."}, has_tool_results=True),
        ]
    )
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        runs = rt.runs
        paused = await runs.start(thread_id, "run the slow runbook")
        resume = asyncio.create_task(runs.resume(thread_id, paused.pending.interrupt_id, [approve()]))
        for _ in range(200):  # until the tool runs
            if runbooks.executions("slow"):
                break
            await asyncio.sleep(0.05)
        resume.cancel()  # the caller goes away (a shutdown, a timeout): not the user's cancel
        with pytest.raises(asyncio.CancelledError):
            await resume
        assert (await runs.info(thread_id))["status"] == "running"
        assert thread_id in await runs.orphans()  # listed as running, its lock free: the sweeper's to carry on
        recovered = await runs.recover(thread_id)
        assert recovered is not None and recovered.status in ("done", "failed")
        assert thread_id not in await runs.orphans()
        assert len(runbooks.executions("slow")) == 1  # the ledger kept it from running twice


# --- threads written before, settings ------------------------------------------------------------------------------


async def test_a_thread_the_stock_saver_wrote_reads_and_carries_on(redis_url, model, runbooks, thread_id):
    """Threads kept in Redis before the compact saver (every value inline in every checkpoint) read as before: their
    history is described from the checkpoints once, and a new task on them is stored compactly and pruned."""
    from graphs.runs import Runs

    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        stock = AsyncRedisSaver(redis_url=redis_url, ttl={"default_ttl": 60, "refresh_on_read": True})
        await stock.asetup()
        try:
            old = Runs(rt.runs.graph.builder.compile(checkpointer=stock), rt.runs.registry, rt.runs.policy, rt.redis)
            paused = await old.start(thread_id, "record it")
            await old.resume(thread_id, paused.pending.interrupt_id, [approve()])
            before = await old.history(thread_id)
        finally:
            await stock.__aexit__(None, None, None)
        await rt.redis.delete(rt.settings.keys.history(thread_id))  # written before there were history lines
        assert await rt.runs.history(thread_id) == before
        paused = await rt.runs.start(thread_id, "record it again")
        done = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
        assert done.status == "done" and len(runbooks.executions("record")) == 2
        history = await rt.runs.history(thread_id)
        old_ids = {c.checkpoint_id for c in before}
        kept_old = [c for c in history if c.checkpoint_id in old_ids]
        assert kept_old and all(c.next == ("review",) for c in kept_old)  # the old turn keeps its approval points
        assert user_messages(model.requests[-1]) == ["record it", "record it again"]


def test_the_pool_settings_come_from_the_environment():
    from graphs.errors import ConfigError
    from graphs.settings import CoreSettings

    settings = CoreSettings.from_env({"CHATOPS_REDIS_MAX_CONNECTIONS": "8", "CHATOPS_REDIS_POOL_TIMEOUT": "2.5"})
    assert (settings.redis_max_connections, settings.redis_pool_timeout_s) == (8, 2.5)
    assert CoreSettings.from_env({}).redis_max_connections == 100
    with pytest.raises(ConfigError, match="CHATOPS_REDIS_MAX_CONNECTIONS"):
        CoreSettings.from_env({"CHATOPS_REDIS_MAX_CONNECTIONS": "lots"})
