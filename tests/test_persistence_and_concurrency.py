"""What must hold across connections, processes and restarts: reviews are visible everywhere,
a paused thread resumes in another process, and concurrent resumes run the approved tool once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from graphs.embedded_redis import EmbeddedRedis
from graphs.runtime import open_runtime
from graphs.types import approve, reject
from sandbox.openai_server import rule

from .conftest import settings_for

ROOT = Path(__file__).resolve().parents[1]
TASK = "run the record runbook"


def script_record(model) -> None:
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}]}, has_tool_results=False),
            rule({"text": "Recorded."}, has_tool_results=True),
        ]
    )


async def test_pending_review_is_visible_from_a_second_connection_every_time(redis_url, model, runbooks):
    """Guards against the saver race that hides interrupts: 50 of 50 pauses must be seen elsewhere."""
    script_record(model)
    seen = 0
    async with (
        open_runtime(settings_for(redis_url, model, runbooks)) as first,
        open_runtime(settings_for(redis_url, model, runbooks)) as second,
    ):
        assert first.redis is not second.redis
        for i in range(50):
            thread_id = f"visible-{os.getpid()}-{time.time_ns()}-{i}"
            paused = await first.runs.start(thread_id, TASK)
            elsewhere = await second.runs.pending_review(thread_id)
            listed = {p.thread_id: p for p in await second.runs.pending()}
            if elsewhere and elsewhere.interrupt_id == paused.pending.interrupt_id and thread_id in listed:
                seen += 1
            await first.runs.cancel(thread_id)
    assert seen == 50


def worker_spec(redis_url: str, model, runbooks, thread_id: str, interrupt_id: str, **extra: object) -> dict:
    """What tests.worker needs to resume one review from another process."""
    return {
        "redis_url": redis_url,
        "model_url": model.base_url,
        "runbooks_dir": str(runbooks.dir),
        "thread_id": thread_id,
        "interrupt_id": interrupt_id,
        **extra,
    }


def run_worker(spec: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.worker", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def worker_result(process: subprocess.Popen[str]) -> dict:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


async def test_a_paused_thread_is_resumed_from_a_new_process(redis_url, model, runbooks, thread_id):
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        paused = await rt.runs.start(thread_id, TASK)
    # This process let go of everything; another one picks the thread up from Redis.
    spec = worker_spec(
        redis_url,
        model,
        runbooks,
        thread_id,
        paused.pending.interrupt_id,
        decisions=[approve()],
        decided_by="U_OTHER",
    )
    result = await asyncio.to_thread(worker_result, run_worker(spec))
    assert result == {"status": "done", "report": "Recorded."}
    assert len(runbooks.executions("record")) == 1
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        assert (await rt.runs.info(thread_id))["status"] == "done"


async def test_two_processes_resuming_at_the_same_instant_run_the_tool_once(redis_url, model, runbooks):
    script_record(model)
    outcomes = []
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        for trial in range(3):
            thread_id = f"race-{os.getpid()}-{time.time_ns()}-{trial}"
            paused = await rt.runs.start(thread_id, TASK)
            spec = worker_spec(
                redis_url,
                model,
                runbooks,
                thread_id,
                paused.pending.interrupt_id,
                decisions=[approve()],
                start_at=time.time() + 4.0,  # both processes are up and connected by then
            )
            workers = [run_worker({**spec, "decided_by": f"U_{n}"}) for n in range(2)]
            results = await asyncio.gather(*(asyncio.to_thread(worker_result, w) for w in workers))
            outcomes.append(sorted(r["status"] for r in results))
    assert outcomes == [["done", "refused"]] * 3
    assert len(runbooks.executions("record")) == 3  # once per trial


async def test_concurrent_resumes_from_separate_connections_run_the_tool_once(redis_url, model, runbooks):
    """The same race, 20 times, between two runtimes (separate Redis connections) in one process."""
    script_record(model)
    async with (
        open_runtime(settings_for(redis_url, model, runbooks)) as a,
        open_runtime(settings_for(redis_url, model, runbooks)) as b,
    ):
        for trial in range(20):
            thread_id = f"double-click-{os.getpid()}-{time.time_ns()}-{trial}"
            paused = await a.runs.start(thread_id, TASK)
            iid = paused.pending.interrupt_id
            results = await asyncio.gather(
                a.runs.resume(thread_id, iid, [approve()]),
                b.runs.resume(thread_id, iid, [approve()]),
                return_exceptions=True,
            )
            assert sum(1 for r in results if not isinstance(r, Exception)) == 1, results
            assert all(type(r).__name__ in ("RunBusy", "NotPending") for r in results if isinstance(r, Exception))
    assert len(runbooks.executions("record")) == 20


async def test_pending_approvals_survive_a_redis_restart(tmp_path, model, runbooks, thread_id):
    """The embedded Redis keeps an append-only file: stop it, start it again, approve."""
    script_record(model)
    data = tmp_path / "redis-data"
    with EmbeddedRedis(data) as server:
        async with open_runtime(settings_for(server.url, model, runbooks)) as rt:
            paused = await rt.runs.start(thread_id, TASK, requester="U_ASK")
    with EmbeddedRedis(data) as server:  # a new process, on a new port
        async with open_runtime(settings_for(server.url, model, runbooks)) as rt:
            pending = {p.thread_id: p for p in await rt.runs.pending()}
            assert pending[thread_id].interrupt_id == paused.pending.interrupt_id
            assert pending[thread_id].requester == "U_ASK"
            done = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
    assert done.status == "done"
    assert len(runbooks.executions("record")) == 1


async def test_rejected_in_one_process_is_final_in_another(redis_url, model, runbooks, thread_id):
    script_record(model)
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        paused = await rt.runs.start(thread_id, TASK)
        await rt.runs.resume(thread_id, paused.pending.interrupt_id, [reject("no")])
    spec = worker_spec(
        redis_url,
        model,
        runbooks,
        thread_id,
        paused.pending.interrupt_id,
        decisions=[approve()],
    )
    result = await asyncio.to_thread(worker_result, run_worker(spec))
    assert result["status"] == "refused" and result["error"] == "NotPending"
    assert runbooks.executions() == []
