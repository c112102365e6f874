"""Scale scenarios of the Slack surface (issue 11), through the real bot, the local Slack and real Redis:
/chatops pending acks at once however many cards wait and however slow Slack is, an answer that takes longer
arrives through the response_url, a simple approval cycle costs two chat.update, and one person's flood of
runs does not hold back another person's decided card."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.commands import ACK_WAIT_S, FOLLOWS, LISTED
from sandbox.openai_server import rule
from sandbox.slack import LocalSlack

from .bot_support import APPROVER, OPS, OTHER, REQUESTER, Thread, all_text, bot_env, header_of, mention

ADMIN = REQUESTER
DISK = {"name": "run_runbook", "args": {"name": "disk-usage"}}
# Enough workers and no per-person limit: every request of a scenario runs at once (bot.queue, when present).
EVERYONE_AT_ONCE = {"CHATOPS_MAX_ACTIVE_RUNS": "40", "CHATOPS_MAX_RUNS_PER_USER": "0"}


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir, CHATOPS_ADMINS=ADMIN, **EVERYONE_AT_ONCE)


def script(model: Any, *, flood_words: int = 0, flood_delay: float = 0.0) -> None:
    """Requests that mention the disk-usage runbook propose it (a card), then report; requests that say
    "flood" stream ``flood_words`` words ``flood_delay`` apart and need no approval."""
    rules = [
        rule({"tool_calls": [DISK]}, last_user_contains="disk-usage", has_tool_results=False),
        rule({"text": "Done as approved."}, has_tool_results=True),
    ]
    if flood_words:
        words = " ".join(f"word{n}" for n in range(flood_words))
        rules.append(rule({"text": words, "chunk_delay": flood_delay}, last_user_contains="flood"))
    model.reset(rules)


def set_latency(slack: LocalSlack, ms: float) -> None:
    slack.api_latency_ms = ms


async def cards(slack: LocalSlack, threads: list[Thread], timeout: float = 60) -> list[dict[str, Any]]:
    await slack.wait_for(
        lambda: all(t.card() for t in threads), timeout=timeout, description=f"{len(threads)} approval cards"
    )
    return [t.card() for t in threads]  # type: ignore[misc]


def followed_up(slack: LocalSlack, user: str) -> list[dict[str, Any]]:
    return [e for e in slack.ephemerals(user) if e.get("source") == "response_url"]


async def noted(slack: LocalSlack, count: int) -> None:
    """Until the bot noted where each card is (a moment after it appears) and pending links them all."""

    async def linked() -> bool:
        answer = await slack.slash_command(ADMIN, OPS, "/chatops", "pending")
        return answer.body.count("open the card") == min(count, LISTED)

    await slack.wait_for(linked, timeout=10, description="pending to link every card")


# --- /chatops pending ---------------------------------------------------------------------------------------


async def test_pending_acks_at_once_with_many_cards_and_a_slow_slack(slack, start, model):
    start()
    script(model)
    count = LISTED + 5
    threads = [await mention(slack, f"run the disk-usage runbook, #{n}") for n in range(count)]
    shown = await cards(slack, threads)
    await noted(slack, count)
    set_latency(slack, 150)  # what a Web API call to slack.com takes
    before = len(slack.calls("chat.getPermalink"))

    answer = await slack.slash_command(ADMIN, OPS, "/chatops", "pending")
    assert answer.status == 200 and answer.latency_ms < 2000, (answer.status, answer.latency_ms)
    lines = answer.body.splitlines()
    assert lines[0].startswith(f"*{count} approval cards waiting*")
    assert len(lines) == 1 + LISTED + 1 and lines[-1] == "…and 5 more."
    assert all("open the card" in line for line in lines[1 : 1 + LISTED])
    assert f"/archives/{OPS}/p{shown[0]['ts'].replace('.', '')}" in answer.body  # the oldest first
    # Only the cards shown are checked (are they still on Slack?), at once rather than one after another.
    checks = slack.calls("chat.getPermalink")[before:]
    assert len(checks) <= LISTED
    if checks:
        assert max(c["time"] for c in checks) - min(c["time"] for c in checks) < 0.15 * LISTED / 2

    # Anyone else sees this channel's cards, just as fast.
    answer = await slack.slash_command(OTHER, OPS, "/chatops", "pending")
    assert answer.status == 200 and answer.latency_ms < 2000
    assert answer.body.startswith(f"*{count} approval cards waiting in this channel*")


async def test_an_answer_that_takes_longer_arrives_through_the_response_url(slack, start, model):
    start()
    script(model)
    threads = [await mention(slack, f"run the disk-usage runbook, #{n}") for n in range(3)]
    await cards(slack, threads)
    await noted(slack, 3)
    set_latency(slack, 1000 * (ACK_WAIT_S + 0.3))  # checking even one card takes longer than the ack may wait

    answer = await slack.slash_command(ADMIN, OPS, "/chatops", "pending")
    assert answer.status == 200 and answer.body == FOLLOWS
    assert answer.latency_ms < 1000 * (ACK_WAIT_S + 1)
    later = await slack.wait_for(lambda: followed_up(slack, ADMIN), timeout=15, description="the answer")
    assert later[-1]["text"].startswith("*3 approval cards waiting*")
    assert later[-1]["text"].count("open the card") == 3
    assert [e["text"] for e in slack.ephemerals(ADMIN)][-2:] == [FOLLOWS, later[-1]["text"]]  # said once
    assert len(later) == 1


# --- chat.update per approval cycle -------------------------------------------------------------------------


async def test_a_simple_approval_cycle_costs_two_chat_updates(slack, start, model, runbooks):
    start()
    script(model)
    cycles = 3
    for n in range(cycles):
        thread = await mention(slack, f"run the disk-usage runbook, #{n}")
        card = await thread.wait_card()
        progress = thread.progress()
        assert progress is not None and progress["ts"] != card["ts"]
        await slack.click_button(APPROVER, OPS, card["ts"], "approve")
        done = await thread.wait_progress("Done")
        await thread.wait_decided(card["ts"])
        # The progress message was posted and then edited once, to its end: never to repeat the card below it.
        versions = slack.edit_history(OPS, done["ts"])
        assert len(versions) == 2 and "Working" in all_text(versions[0]) and "Done" in all_text(versions[1])
        assert [header_of(v) for v in slack.edit_history(OPS, card["ts"])] == ["Approval needed", "Approval decided"]
    await asyncio.sleep(1.5)  # anything still owed would go out by now
    edits = slack.calls("chat.update")
    assert len(edits) <= 2 * cycles, [(c["params"]["ts"], c["params"]["text"][:60]) for c in edits]
    assert len(runbooks.executions("disk-usage")) == cycles


# --- fairness of the chat.update budget ---------------------------------------------------------------------


async def test_a_flood_of_runs_does_not_hold_back_another_persons_decided_card(slack, start, model):
    flood_runs = 30
    start(CHATOPS_UPDATE_BUDGET="10")  # 10 edits a minute for the workspace: the flood wants far more
    script(model, flood_words=24, flood_delay=0.1)  # each flood run streams for about 2.5 s, then ends
    thread = await mention(slack, "run the disk-usage runbook")  # Alice's request: a card for Bob
    card = await thread.wait_card()
    flood = [await mention(slack, f"flood {n}: tell me a long story", user=OTHER) for n in range(flood_runs)]

    # The flood runs stream and end; their edits use every slot the budget lets them have.
    def model_calls() -> int:
        return sum(1 for r in model.requests if "flood" in str(r.get("messages", [])[-1:]))

    await slack.wait_for(lambda: model_calls() >= flood_runs, timeout=30, description="every flood run to start")
    await slack.wait_for(lambda: len(slack.calls("chat.update")) >= 9, timeout=30, description="the budget used")
    await asyncio.sleep(3)  # every flood run has ended by now: its end state waits for the budget too

    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_decided(card["ts"], timeout=15)
    edits = slack.calls("chat.update")
    decided_at = next(
        n for n, c in enumerate(edits) if c["params"]["ts"] == card["ts"] and "Approval decided" in str(c["params"])
    )
    flood_ts = {m["ts"] for t in flood for m in t.replies() if m.get("user") == "U0BOT"}
    flood_before = [c for c in edits[:decided_at] if c["params"]["ts"] in flood_ts]
    # Most of the flood's edits (at least one end state per run, and its streaming) had not gone out yet: the
    # decided card went ahead of them instead of waiting its turn behind a minute or more of them.
    assert len(flood_before) < flood_runs // 2, len(flood_before)
    ended = [t for t in flood if (p := t.progress()) and "Working" not in all_text(p)]
    assert len(ended) < flood_runs // 2
    assert all(c["status"] == 200 for c in edits)
