"""Backpressure, as people see it: a bounded number of runs work at once, more say they are queued and start
later, one person cannot queue without end, and a queued run survives its process dying.

The real bot processes over real HTTP with signed requests, the local Slack, the scripted model and real Redis.
"""

from __future__ import annotations

import pytest

from sandbox.openai_server import rule

from .bot_support import APPROVER, OPS, OTHER, REQUESTER, all_text, bot_env, mention


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir, CHATOPS_MAX_ACTIVE_RUNS="1")


SLOW = " ".join(f"word{n}" for n in range(60))


def script(model) -> None:
    """ "slow" tasks stream for a few seconds and then answer; "quick" ones answer at once; "disk" ones propose
    the disk-usage runbook (a card) and report after it ran."""
    model.reset(
        [
            rule({"text": SLOW, "chunk_delay": 0.1}, last_user_contains="slow"),
            rule(
                {"tool_calls": [{"name": "run_runbook", "args": {"name": "disk-usage"}}]},
                last_user_contains="disk",
                has_tool_results=False,
            ),
            rule({"text": "Disk checked."}, has_tool_results=True),
            rule({"text": "Quick answer."}, last_user_contains="quick"),
        ]
    )


async def test_a_run_beyond_the_limit_says_it_is_queued_and_starts_when_a_worker_is_free(slack, start, model):
    start()
    script(model)
    first = await mention(slack, "slow task one")
    await first.wait_progress("Working")
    second = await mention(slack, "quick task two", user=OTHER)
    queued = await second.wait_progress("Queued")
    assert "it starts when a worker is free" in all_text(queued)
    third = await mention(slack, "quick task three", user=APPROVER)
    await third.wait_progress("Queued (1 ahead)")
    assert len(model.requests) == 1, "the queued run did not start while the first worked"
    assert "word59" not in all_text(first.progress())  # (the first was indeed still working)
    await first.wait_progress("word59", timeout=30)
    done = await second.wait_progress("Quick answer.", timeout=30)
    assert "Nothing to do" in all_text(done)
    await third.wait_progress("Quick answer.", timeout=30)


async def test_one_person_cannot_queue_without_end(slack, start, model):
    start(CHATOPS_MAX_RUNS_PER_USER="1")
    script(model)
    first = await mention(slack, "slow task one")
    await first.wait_progress("Working")
    second = await mention(slack, "quick task two")  # the same person, another thread
    await slack.wait_for(
        lambda: any("CHATOPS_MAX_RUNS_PER_USER" in m.get("text", "") for m in second.replies()),
        timeout=10,
        description="a refusal naming the limit",
    )
    refusal = next(m["text"] for m in second.replies() if "CHATOPS_MAX_RUNS_PER_USER" in m.get("text", ""))
    assert f"<@{REQUESTER}>, you have 1 runs queued or working" in refusal
    other = await mention(slack, "quick task three", user=APPROVER)  # someone else is not held back
    await other.wait_progress("Quick answer.", timeout=30)
    # A run waiting for approval does not count: its slot is given back when it pauses.
    await first.wait_progress("word59", timeout=30)
    paused = await mention(slack, "disk check")
    await paused.wait_card()
    again = await mention(slack, "quick task four")
    await again.wait_progress("Quick answer.", timeout=30)


async def test_a_queued_run_survives_its_process_dying(slack, start, model, runbooks):
    first_bot = start()
    script(model)
    first = await mention(slack, "slow task one")
    await first.wait_progress("Working")
    second = await mention(slack, "disk check", user=OTHER)
    await second.wait_progress("Queued")
    first_bot.kill()  # as a crash would, with one run working and one queued
    start()
    # Another process takes the queued run over (once its claim has lapsed) and the sweeper carries on the first.
    card = await second.wait_card(timeout=90)
    assert "run_runbook" in all_text(card)
    await first.wait_progress("word59", timeout=90)
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await second.wait_progress("Done", timeout=30)
    assert len(runbooks.executions("disk-usage")) == 1
