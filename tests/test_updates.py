"""Tests of bot.updates: chat.update edits through the real AsyncWebClient against the local Slack, with the
workspace budget in a real Redis 8 (shared by two updaters where a scenario needs "replicas")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from itertools import pairwise
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.updates import MessageUpdater, Priority, SharedBudget
from graphs.keys import Keys
from sandbox.slack import LocalSlack

SECRET = "test-signing-secret"
TOKEN = "xoxb-test"

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    with LocalSlack(SECRET, bot_token=TOKEN) as s:
        s.add_channel("ops")
        yield s


@pytest.fixture
def client(slack: LocalSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.api_url)


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    r = redis.asyncio.from_url(redis_url)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid4().hex}:"


@pytest.fixture
async def updaters() -> AsyncIterator[list[MessageUpdater]]:
    """Updaters a test starts; closed (bounded) even when the test fails."""
    started: list[MessageUpdater] = []
    yield started
    for u in started:
        await u.close(drain_timeout_s=0.2)


async def post(client: AsyncWebClient, slack: LocalSlack, n: int) -> tuple[str, list[str]]:
    channel = slack.channel_id("ops")
    ts = [(await client.chat_postMessage(channel=channel, text=f"run {i}: starting"))["ts"] for i in range(n)]
    return channel, ts


async def started(updaters: list[MessageUpdater], *args: Any, **kwargs: Any) -> MessageUpdater:
    u = MessageUpdater(*args, **kwargs)
    await u.start()
    updaters.append(u)
    return u


def updates(slack: LocalSlack) -> list[dict[str, Any]]:
    return slack.calls("chat.update")


def text_of(slack: LocalSlack, channel: str, ts: str) -> str:
    msg = slack.message(channel, ts)
    assert msg is not None
    return str(msg["text"])


def max_in_window(times: list[float], window_s: float) -> int:
    """The most calls in any half-open window of `window_s` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ---------------------------------------------------------------------- the shared budget itself


async def test_budget_admits_per_window_and_says_how_long_to_wait(rds: redis.asyncio.Redis, prefix: str) -> None:
    a = SharedBudget(rds, Keys(prefix).budget("chat.update"), per_minute=3, window_s=0.5)
    b = SharedBudget(rds, Keys(prefix).budget("chat.update"), per_minute=3, window_s=0.5)  # another replica
    assert [await a.acquire(), await b.acquire(), await a.acquire()] == [0.0, 0.0, 0.0]
    wait = await b.acquire()
    assert 0 < wait <= 0.5
    await asyncio.sleep(wait)
    assert await a.acquire() == 0.0
    await b.block(2)
    assert 1.8 < await a.acquire() <= 2.0  # a 429 seen by one replica pauses the other


def test_a_client_that_sleeps_on_429_itself_is_refused(rds: redis.asyncio.Redis) -> None:
    client = AsyncWebClient(token=TOKEN, retry_handlers=[AsyncRateLimitErrorRetryHandler()])
    with pytest.raises(ValueError, match="RateLimitErrorRetryHandler"):
        MessageUpdater(client, rds)


# ---------------------------------------------------------------------- scenarios


async def test_quick_submits_coalesce_and_the_last_text_wins(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    u = await started(updaters, client, rds, keys=Keys(prefix), message_interval_s=0.3)
    channel, [ts] = await post(client, slack, 1)
    for i in range(20):
        u.submit(channel, ts, text=f"step {i}/20")
        await asyncio.sleep(0.02)
    assert await u.flush(channel, ts, timeout_s=5)

    calls = updates(slack)
    assert 1 <= len(calls) <= 3
    assert text_of(slack, channel, ts) == "step 19/20"
    seen = [int(h["text"].split()[1].split("/")[0]) for h in slack.edit_history(channel, ts)[1:]]
    assert seen == sorted(seen) and seen[-1] == 19  # edits only move forward
    gaps = [b["time"] - a["time"] for a, b in pairwise(calls)]
    assert all(g >= 0.3 - 0.02 for g in gaps), gaps  # progress edits of one message are spaced
    assert u.stats["coalesced"] >= 17 and u.stats["sent"] == len(calls) and u.stats["pending"] == 0


async def test_final_goes_ahead_of_progress_when_the_budget_is_short(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    slack.set_rate_limit("chat.update", 3)
    channel, ts = await post(client, slack, 5)
    u = await started(updaters, client, rds, keys=Keys(prefix), per_minute=3)
    for i, t in enumerate(ts):
        u.submit(channel, t, text=f"run {i}: step 1")
    u.submit(channel, ts[4], text="run 4: done", final=True)  # the newest message, yet it goes first

    await slack.wait_for(lambda: len(updates(slack)) >= 2, timeout=5)
    await asyncio.sleep(0.3)  # no more progress may go out: the last slot of the window is kept for finals
    calls = updates(slack)
    assert [(c["params"]["ts"], c["params"]["text"]) for c in calls] == [
        (ts[4], "run 4: done"),
        (ts[0], "run 0: step 1"),
    ]
    assert all(c["status"] == 200 for c in calls)
    assert text_of(slack, channel, ts[4]) == "run 4: done"
    assert text_of(slack, channel, ts[2]) == "run 2: starting"  # still waiting for budget
    assert u.stats["pending"] == 3 and u.stats["coalesced"] == 1

    # A card decided now still shows at once: the reserved slot takes it, ahead of the waiting progress.
    u.submit(channel, ts[3], text="run 3: approved", decision=True)
    await slack.wait_for(lambda: text_of(slack, channel, ts[3]) == "run 3: approved", timeout=5)
    assert len(updates(slack)) == 3 and slack.peak_rate("chat.update") <= 3


async def test_429_storm_pauses_every_replica_and_finals_still_arrive(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, ts = await post(client, slack, 4)
    a = await started(updaters, client, rds, keys=Keys(prefix), message_interval_s=0.1)
    b = await started(
        updaters, AsyncWebClient(token=TOKEN, base_url=slack.api_url), rds, keys=Keys(prefix), message_interval_s=0.1
    )
    slack.inject_fault("chat.update", status=429, retry_after=1, times=5)
    for i, t in enumerate(ts):
        replica = a if i % 2 == 0 else b
        replica.submit(channel, t, text=f"run {i}: step 1")
        replica.submit(channel, t, text=f"run {i}: done", final=True)

    results = await asyncio.gather(
        *[(a if i % 2 == 0 else b).flush(channel, t, timeout_s=15) for i, t in enumerate(ts)]
    )
    assert results == [True] * 4
    assert [text_of(slack, channel, t) for t in ts] == [f"run {i}: done" for i in range(4)]
    calls = updates(slack)
    assert [c["status"] for c in calls].count(429) == 5
    for limited in (c for c in calls if c["status"] == 429):
        # No replica called before Retry-After had passed; only a call the other replica already had in flight
        # when Slack answered 429 may land right after it.
        for later in (c for c in calls if c["seq"] > limited["seq"]):
            gap = later["time"] - limited["time"]
            assert gap < 0.1 or gap >= 1.0 - 0.01, (limited, later)
    assert a.stats["rate_limited"] + b.stats["rate_limited"] == 5
    assert a.stats["pending"] == b.stats["pending"] == 0


async def test_two_replicas_stay_within_one_budget(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, ts = await post(client, slack, 30)
    a = await started(updaters, client, rds, keys=Keys(prefix), per_minute=10)
    b = await started(
        updaters, AsyncWebClient(token=TOKEN, base_url=slack.api_url), rds, keys=Keys(prefix), per_minute=10
    )
    for i, t in enumerate(ts):
        # Card decisions: the class that may use the whole window (end states leave a slot for decisions).
        (a if i % 2 else b).submit(channel, t, text=f"run {i}: decided", decision=True)

    await slack.wait_for(lambda: len(updates(slack)) >= 10, timeout=5)
    await asyncio.sleep(0.5)
    assert len(updates(slack)) == 10
    assert a.stats["pending"] + b.stats["pending"] == 20
    await asyncio.gather(a.close(drain_timeout_s=0.5), b.close(drain_timeout_s=0.5))
    assert len(updates(slack)) == 10  # closing does not buy extra calls
    assert slack.peak_rate("chat.update") <= 10
    assert all(c["status"] == 200 for c in updates(slack))


async def test_two_replicas_drain_everything_within_a_short_window(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    window_s, limit = 1.0, 4
    channel, ts = await post(client, slack, 10)
    a = await started(updaters, client, rds, keys=Keys(prefix), per_minute=limit, window_s=window_s)
    b = await started(
        updaters,
        AsyncWebClient(token=TOKEN, base_url=slack.api_url),
        rds,
        keys=Keys(prefix),
        per_minute=limit,
        window_s=window_s,
    )
    for i, t in enumerate(ts):
        (a if i % 2 else b).submit(channel, t, text=f"run {i}: done", final=True)

    results = await asyncio.gather(*[(a if i % 2 else b).flush(channel, t, timeout_s=10) for i, t in enumerate(ts)])
    assert results == [True] * 10
    assert [text_of(slack, channel, t) for t in ts] == [f"run {i}: done" for i in range(10)]
    times = [c["time"] for c in updates(slack)]
    assert len(times) == 10
    # Slack logs a call when it answers; admission happened a few ms earlier, hence the small tolerance.
    assert max_in_window(times, window_s - 0.1) <= limit


async def test_permanent_errors_drop_that_edit_only(
    slack: LocalSlack,
    client: AsyncWebClient,
    rds: redis.asyncio.Redis,
    prefix: str,
    updaters: list[MessageUpdater],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.updates")
    channel, [ok_ts, card_ts] = await post(client, slack, 2)
    u = await started(updaters, client, rds, keys=Keys(prefix))
    u.submit(channel, "1700000000.000001", text="lost", final=True)
    too_long_header = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 200}}]
    u.submit(channel, card_ts, text="card", blocks=too_long_header, final=True)
    u.submit(channel, ok_ts, text="run 0: done", final=True)

    assert await u.flush(channel, "1700000000.000001", timeout_s=5) is False
    assert await u.flush(channel, card_ts, timeout_s=5) is False
    assert await u.flush(channel, ok_ts, timeout_s=5) is True
    assert text_of(slack, channel, ok_ts) == "run 0: done"
    assert text_of(slack, channel, card_ts) == "run 1: starting"
    assert len(updates(slack)) == 3  # nothing permanent is retried
    assert "message_not_found" in caplog.text and "1700000000.000001" in caplog.text
    assert "invalid_blocks" in caplog.text and "json-pointer:/blocks/0/text" in caplog.text
    assert TOKEN not in caplog.text
    assert u.stats["sent"] == 1 and u.stats["errors"] == 2 and u.stats["pending"] == 0


async def test_server_errors_are_retried_with_backoff(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, [ts] = await post(client, slack, 1)
    u = await started(updaters, client, rds, keys=Keys(prefix), retry_base_s=0.1)
    slack.inject_fault("chat.update", status=500, times=2)
    u.submit(channel, ts, text="run 0: done", final=True)

    assert await u.flush(channel, ts, timeout_s=5)
    assert text_of(slack, channel, ts) == "run 0: done"
    calls = updates(slack)
    assert [c["status"] for c in calls] == [500, 500, 200]
    assert calls[2]["time"] - calls[1]["time"] >= 0.2 - 0.02  # backoff doubled
    assert u.stats["errors"] == 2 and u.stats["sent"] == 1


async def test_server_errors_give_up_after_max_attempts(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, [ts] = await post(client, slack, 1)
    u = await started(updaters, client, rds, keys=Keys(prefix), retry_base_s=0.05, max_attempts_5xx=3)
    slack.inject_fault("chat.update", status=503, times=10)
    u.submit(channel, ts, text="run 0: done", final=True)
    assert await u.flush(channel, ts, timeout_s=5) is False
    assert len(updates(slack)) == 3 and u.stats["pending"] == 0


async def test_close_delivers_what_is_pending(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str
) -> None:
    channel, ts = await post(client, slack, 3)
    u = MessageUpdater(client, rds, keys=Keys(prefix))
    await u.start()
    for i, t in enumerate(ts):
        u.submit(channel, t, text=f"run {i}: step 1")
        u.submit(channel, t, text=f"run {i}: done", final=True)
    started_at = time.monotonic()
    await u.close(drain_timeout_s=5)
    assert time.monotonic() - started_at < 2
    assert [text_of(slack, channel, t) for t in ts] == [f"run {i}: done" for i in range(3)]
    assert u.stats["pending"] == 0
    u.submit(channel, ts[0], text="too late")  # after close: ignored, never raises
    assert u.stats["pending"] == 0


async def test_close_is_bounded_when_slack_keeps_us_waiting(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str
) -> None:
    channel, [ts] = await post(client, slack, 1)
    u = MessageUpdater(client, rds, keys=Keys(prefix))
    await u.start()
    slack.inject_fault("chat.update", status=429, retry_after=30)
    u.submit(channel, ts, text="run 0: done", final=True)
    await slack.wait_for(lambda: updates(slack), timeout=5)
    flushed = asyncio.ensure_future(u.flush(channel, ts, timeout_s=20))
    started_at = time.monotonic()
    await u.close(drain_timeout_s=0.5)
    assert time.monotonic() - started_at < 2
    assert await flushed is False
    assert len(updates(slack)) == 1


# ---------------------------------------------------------------------- classes, fairness, settling (issue 11)


def test_the_window_keeps_slots_for_end_states_and_more_for_decisions(rds: redis.asyncio.Redis) -> None:
    def limits(per_minute: int) -> list[int]:
        budget = SharedBudget(rds, "unused", per_minute)
        return [budget.limit(p) for p in (Priority.PROGRESS, Priority.END, Priority.DECISION)]

    assert limits(45) == [30, 42, 45]  # 2 edits per approval cycle: 22 budgeted cycles a minute
    assert limits(10) == [6, 9, 10]
    assert limits(3) == [2, 2, 3]
    assert limits(2) == [2, 2, 2]


async def test_end_states_of_one_replica_leave_a_slot_for_another_replicas_decision(
    rds: redis.asyncio.Redis, prefix: str
) -> None:
    key = Keys(prefix).budget("chat.update")
    flooding, deciding = SharedBudget(rds, key, 10, 30.0), SharedBudget(rds, key, 10, 30.0)
    assert [await flooding.acquire(Priority.END) for _ in range(9)] == [0.0] * 9
    assert await flooding.acquire(Priority.END) > 0
    assert await deciding.acquire(Priority.PROGRESS) > 0
    assert await deciding.acquire(Priority.DECISION) == 0.0


async def test_decisions_go_first_then_end_states_then_progress_shared_round_robin_between_owners(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, ts = await post(client, slack, 11)
    u = await started(updaters, client, rds, keys=Keys(prefix), message_interval_s=0, settle_s=0)
    for i in range(6):  # one person's flood of progress
        u.submit(channel, ts[i], text=f"flood {i}", owner="U0FLOOD")
    u.submit(channel, ts[6], text="other 0", owner="U0OTHER")
    u.submit(channel, ts[7], text="other 1", owner="U0OTHER")
    u.submit(channel, ts[8], text="flood ended", final=True, owner="U0FLOOD")
    u.submit(channel, ts[9], text="other's card decided", decision=True, owner="U0OTHER")
    u.submit(channel, ts[10], text="flood card decided", decision=True, owner="U0FLOOD")
    assert all(await asyncio.gather(*(u.flush(channel, t, timeout_s=5) for t in ts)))

    sent = [c["params"]["text"] for c in updates(slack)]
    assert sent == [
        "other's card decided",  # decisions first, oldest first while nobody was served yet
        "flood card decided",
        "flood ended",  # then end states
        "other 0",  # then progress, round robin: the owner served least recently goes next...
        "flood 0",
        "other 1",  # ...so one owner's six edits do not all go before the other's two
        "flood 1",
        "flood 2",
        "flood 3",
        "flood 4",
        "flood 5",
    ]


async def test_a_progress_edit_settles_and_goes_out_with_the_end_state_that_follows(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, [ts] = await post(client, slack, 1)
    u = await started(updaters, client, rds, keys=Keys(prefix), message_interval_s=0.5)
    u.submit(channel, ts, text="running the runbook")
    await asyncio.sleep(0.2)
    u.submit(channel, ts, text="done", final=True)
    assert await u.flush(channel, ts, timeout_s=5)
    assert [c["params"]["text"] for c in updates(slack)] == ["done"]

    u.submit(channel, ts, text="next step")  # progress alone still goes out, once it settled
    assert await u.flush(channel, ts, timeout_s=5)
    calls = updates(slack)
    assert [c["params"]["text"] for c in calls] == ["done", "next step"]
    assert calls[1]["time"] - calls[0]["time"] >= 0.5 - 0.02


async def test_an_undelivered_edit_can_be_withdrawn_unless_it_holds_older_content(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, [ts, other] = await post(client, slack, 2)
    u = await started(updaters, client, rds, keys=Keys(prefix), message_interval_s=0.5)
    mark = u.version(channel, ts)
    u.submit(channel, ts, text="the model proposes two calls")
    assert not u.edited(channel, ts)
    assert u.withdraw(channel, ts, after=mark)
    assert await u.flush(channel, ts, timeout_s=1)  # nothing is owed
    assert u.stats["withdrawn"] == 1 and u.stats["pending"] == 0

    u.submit(channel, other, text="working")  # submitted before the mark: it must still go out
    mark = u.version(channel, other)
    u.submit(channel, other, text="the model proposes a call")
    assert not u.withdraw(channel, other, after=mark)
    assert await u.flush(channel, other, timeout_s=5)
    assert u.edited(channel, other)
    await asyncio.sleep(0.6)
    assert [(c["params"]["ts"], c["params"]["text"]) for c in updates(slack)] == [(other, "the model proposes a call")]


async def test_a_message_slack_says_is_gone_calls_its_hook_once(
    slack: LocalSlack, client: AsyncWebClient, rds: redis.asyncio.Redis, prefix: str, updaters: list[MessageUpdater]
) -> None:
    channel, [ts] = await post(client, slack, 1)
    u = await started(updaters, client, rds, keys=Keys(prefix))
    gone: list[str] = []

    async def note() -> None:
        gone.append("card")

    u.submit(channel, "1700000000.000002", text="decided", decision=True, on_gone=note)
    u.submit(channel, ts, text="decided", decision=True, on_gone=note)  # this one exists
    assert await u.flush(channel, "1700000000.000002", timeout_s=5) is False
    assert await u.flush(channel, ts, timeout_s=5) is True
    await slack.wait_for(lambda: gone, timeout=2)
    u.submit(channel, "1700000000.000002", text="closed", decision=True)
    assert await u.flush(channel, "1700000000.000002", timeout_s=5) is False
    await asyncio.sleep(0.1)
    assert gone == ["card"]
