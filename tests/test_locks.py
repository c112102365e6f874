"""A thread's lock is exclusive even when Redis goes away: a holder that cannot keep its lock stops
before another process can take the thread, and a run stopped that way is carried on elsewhere, once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from graphs.errors import LockLost, RunBusy
from graphs.locks import ThreadLocks
from graphs.runs import Runs
from graphs.runtime import Runtime, open_runtime
from graphs.types import Cancelled, Failed, Finished, RunEvent, ToolFinished, approve
from sandbox.openai_server import rule

from .conftest import settings_for
from .netfault import TcpProxy

TTL_MS = 1500  # short, so losing a lock takes about a second; the margin is ttl/5 = 300 ms
TICK_S = 0.02
BOUND_S = 15.0  # no wait in these tests lasts longer than this


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy.in_front_of(redis_url) as network:
        yield network


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def proxied(proxy: TcpProxy) -> AsyncIterator[Redis]:
    """A client whose every connection goes through the proxy."""
    client = Redis.from_url(proxy.url, decode_responses=True)
    yield client
    proxy.drop_connections()
    proxy.restore()
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-locks-{uuid.uuid4().hex[:8]}:"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.05)


class Worker:
    """Holds a thread's lock and ticks (records a timestamp) until it is stopped."""

    def __init__(self, locks: ThreadLocks, thread_id: str) -> None:
        self.locks = locks
        self.thread_id = thread_id
        self.ticks: list[float] = []
        self.holding = asyncio.Event()
        self.task = asyncio.create_task(self._work())

    async def _work(self) -> None:
        async with self.locks.hold(self.thread_id):
            self.holding.set()
            while True:
                self.ticks.append(time.monotonic())
                await asyncio.sleep(TICK_S)

    async def started(self) -> None:
        await asyncio.wait_for(self.holding.wait(), BOUND_S)

    async def outcome(self) -> BaseException | None:
        """How the work ended: the exception it raised, CancelledError, or None."""
        done, _ = await asyncio.wait([self.task], timeout=BOUND_S)
        assert done, "the worker was not stopped"
        if self.task.cancelled():
            return asyncio.CancelledError()
        return self.task.exception()


async def test_a_holder_cut_off_from_redis_stops_before_anyone_else_gets_the_thread(
    proxy, proxied, direct, prefix, caplog
):
    caplog.set_level(logging.WARNING, logger="graphs.locks")
    first = Worker(ThreadLocks(proxied, prefix=prefix, ttl_ms=TTL_MS), "t1")
    await first.started()
    await asyncio.sleep(TTL_MS / 1000)  # a few extensions go through while the network is fine
    proxy.blackhole()  # from now on its extensions (and its release) hang

    second_acquired_at: list[float] = []

    async def second_holder() -> None:
        async with ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS).hold("t1", wait_s=BOUND_S):
            second_acquired_at.append(time.monotonic())

    second = asyncio.create_task(second_holder())
    error = await first.outcome()
    lost_at = time.monotonic()
    ticks_when_stopped = len(first.ticks)
    await asyncio.wait_for(second, BOUND_S)
    await asyncio.sleep(10 * TICK_S)  # time for the first holder's work to tick again, if it still could

    assert isinstance(error, LockLost), error
    assert "lost its hold on thread t1" in str(error)
    assert second_acquired_at and lost_at < second_acquired_at[0]
    assert first.ticks and all(tick < second_acquired_at[0] for tick in first.ticks)
    assert len(first.ticks) == ticks_when_stopped  # its work never ran again
    # Its release hung too: logged, and it did not replace LockLost.
    assert any("could not release lock" in r.getMessage() for r in caplog.records)


async def test_a_holder_whose_lock_was_taken_stops_and_leaves_the_new_owners_lock_alone(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS)
    first = Worker(locks, "t2")
    await first.started()
    # As if the lock had expired and another process had taken it.
    async with direct.pipeline(transaction=True) as pipe:
        pipe.delete(f"{prefix}t2")
        pipe.set(f"{prefix}t2", "another-process", px=60_000)
        await pipe.execute()

    error = await first.outcome()
    ticks_when_stopped = len(first.ticks)
    await asyncio.sleep(10 * TICK_S)

    assert isinstance(error, LockLost), error
    assert "another process took it" in str(error)
    assert await direct.get(f"{prefix}t2") == "another-process"
    assert len(first.ticks) == ticks_when_stopped  # its work never ran again


async def test_cancelling_a_holder_from_outside_raises_cancelled_and_releases_the_lock(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS)
    worker = Worker(locks, "t3")
    await worker.started()
    worker.task.cancel()
    error = await worker.outcome()
    assert isinstance(error, asyncio.CancelledError)
    assert not await locks.is_held("t3")


async def test_a_cancellation_from_outside_during_a_lock_loss_still_propagates(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS)
    holding = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("t4"):
            holding.set()
            try:
                await asyncio.sleep(BOUND_S)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                assert current is not None
                current.cancel()  # someone else cancels it in the same instant
                raise

    task = asyncio.create_task(holder())
    await asyncio.wait_for(holding.wait(), BOUND_S)
    await direct.set(f"{prefix}t4", "another-process", px=60_000)
    done, _ = await asyncio.wait([task], timeout=BOUND_S)
    assert done and task.cancelled()
    assert await direct.get(f"{prefix}t4") == "another-process"


async def test_a_holder_that_swallows_the_stop_still_learns_it_lost_the_lock(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS)
    holding = asyncio.Event()

    async def holder() -> str:
        async with locks.hold("t7"):
            holding.set()
            try:
                await asyncio.sleep(BOUND_S)
            except asyncio.CancelledError:
                pass  # careless code that carries on
            return "finished as if nothing happened"

    task = asyncio.create_task(holder())
    await asyncio.wait_for(holding.wait(), BOUND_S)
    await direct.set(f"{prefix}t7", "another-process", px=60_000)
    done, _ = await asyncio.wait([task], timeout=BOUND_S)
    assert done and isinstance(task.exception(), LockLost)
    assert task.cancelling() == 0  # the stop was taken back: nothing is left counted against the task


async def test_a_hold_lasting_several_ttls_keeps_its_lock_and_releases_it_at_the_end(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=600)
    async with locks.hold("t5"):
        token = await direct.get(f"{prefix}t5")
        for _ in range(30):  # 3 s, five times the ttl
            await asyncio.sleep(0.1)
            assert await direct.get(f"{prefix}t5") == token
            assert await direct.pttl(f"{prefix}t5") > 0
    assert not await locks.is_held("t5")
    assert await direct.exists(f"{prefix}t5") == 0


async def test_a_second_holder_is_refused_while_the_first_keeps_the_thread(direct, prefix):
    locks = ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS)
    async with locks.hold("t6"):
        with pytest.raises(RunBusy) as refused:
            async with ThreadLocks(direct, prefix=prefix, ttl_ms=TTL_MS).hold("t6", wait_s=0.3):
                pytest.fail("two holders of one thread")
        assert not isinstance(refused.value, LockLost)
        assert await locks.is_held("t6")
    assert not await locks.is_held("t6")


# --- a whole run ---------------------------------------------------------------------------------


def with_short_lock(rt: Runtime) -> Runs:
    """The runtime's runs, with a lock that expires in 1.5 s instead of 15 s."""
    runs = rt.runs
    return Runs(runs.graph, runs.registry, runs.policy, rt.redis, prefix=rt.settings.key_prefix, lock_ttl_ms=TTL_MS)


async def test_a_run_cut_off_from_redis_mid_tool_stops_and_is_carried_on_elsewhere_without_rerunning_it(
    proxy, redis_url, model, runbooks, thread_id, prefix, caplog
):
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "slow"}}]}, has_tool_results=False),
            rule({"text": "Carried on elsewhere."}, has_tool_results=True),
        ]
    )
    caplog.set_level(logging.WARNING)
    cut_off_events: list[RunEvent] = []

    async def on_cut_off_event(event: RunEvent) -> None:
        cut_off_events.append(event)

    async with open_runtime(settings_for(proxy.url, model, runbooks, key_prefix=prefix)) as cut_off:
        runs = with_short_lock(cut_off)
        paused = await runs.start(thread_id, "run the slow runbook")
        assert paused.status == "waiting"
        resume = asyncio.create_task(
            runs.resume(thread_id, paused.pending.interrupt_id, [approve()], on_event=on_cut_off_event)
        )

        async def slow_started() -> bool:
            return len(runbooks.executions("slow")) == 1

        await eventually(slow_started, "the slow runbook to start")
        proxy.blackhole()  # mid-tool: this replica can no longer reach Redis
        done, _ = await asyncio.wait([resume], timeout=BOUND_S)
        assert done, "the cut-off run was not stopped"
        assert isinstance(resume.exception(), LockLost), resume.exception()
        assert not [e for e in cut_off_events if isinstance(e, (Failed, Cancelled, Finished))]
        assert not [r for r in caplog.records if r.name == "graphs.runs" and r.exc_info]
        assert [r for r in caplog.records if r.name == "graphs.runs" and "stopped driving run" in r.getMessage()]

        proxy.drop_connections()
        proxy.restore()
        recovered_events: list[RunEvent] = []

        async def on_recovered_event(event: RunEvent) -> None:
            recovered_events.append(event)

        async with open_runtime(settings_for(redis_url, model, runbooks, key_prefix=prefix)) as elsewhere:
            other = with_short_lock(elsewhere)
            assert (await other.info(thread_id))["status"] == "running"  # neither failed nor cancelled

            async def orphaned() -> bool:
                return thread_id in await other.orphans()

            await eventually(orphaned, "the stopped run's lock to expire")
            result = await other.recover(thread_id, on_event=on_recovered_event)

            # Not "done": nobody knows whether the runbook did its work, and the run says so.
            assert result is not None and result.status == "failed" and "check its effect by hand" in result.error
            assert result.report == "Carried on elsewhere."
            assert (await other.info(thread_id))["status"] == "failed"
            finished = [e for e in recovered_events if isinstance(e, ToolFinished)]
            assert len(finished) == 1 and not finished[0].ok
            assert "outcome was not recorded" in finished[0].output
    assert len(runbooks.executions("slow")) == 1
