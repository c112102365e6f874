"""The bot's measurements against the local Slack: ack latency with runs in flight, click-to-card latency,
full approval cycles, and the chat.update calls they cost.

All times are wall-clock seconds from ``time.time()`` where they are compared with the local Slack's message
timestamps (which it stamps with the same clock); ack latencies are the local Slack's own ``Delivery.latency_ms``.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeVar

from sandbox.slack import Delivery, LocalSlack

from .harness import (
    APPROVER,
    PROBE_TASK,
    RECORD_TASK,
    REQUESTER,
    STREAM_TASK,
    SlackThread,
    checkbox_of,
    cpu_seconds,
    decided_at,
    mention,
)

T = TypeVar("T")

STEP_TIMEOUT_S = 30.0  # one wait inside a cycle (a card to appear, Done to show) when nothing limits the bot
SETUP_CONCURRENCY = 10  # deliveries at once while preparing a scenario (not measured)


async def bounded_gather(factories: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run coroutine factories with at most `limit` at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(one(f) for f in factories)))


# --- CPU ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds the bot process and this process (the local Slack's thread included) used over `seconds`."""

    seconds: float
    bot_s: float
    bench_s: float

    @property
    def bot_pct(self) -> float:
        return 100 * self.bot_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def bench_pct(self) -> float:
        return 100 * self.bench_s / self.seconds if self.seconds > 0 else 0.0


class CpuMeter:
    """Reads CPU time at `start()` and returns what was used at `stop()`."""

    def __init__(self, bot_pid: int | None) -> None:
        self.bot_pid = bot_pid
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        bot = cpu_seconds(self.bot_pid) if self.bot_pid is not None else 0.0
        return time.monotonic(), bot, time.process_time()

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuUse:
        end = self._read()
        return CpuUse(end[0] - self._start[0], end[1] - self._start[1], end[2] - self._start[2])


# --- 1 + 2: acks and click-to-card with N runs in flight ------------------------------------------------------


@dataclass
class AckLoad:
    """What happened while N runs were in flight."""

    in_flight: int
    acks: dict[str, list[float]] = field(default_factory=dict)  # kind -> ack latencies (ms)
    failed: dict[str, int] = field(default_factory=dict)  # kind -> deliveries without an HTTP 200
    click_to_card_ms: list[float] = field(default_factory=list)
    cards_not_updated: int = 0
    still_in_flight: int = 0  # of the N, how many were still working when the last probe had been answered
    window_s: float = 0.0
    cpu: CpuUse | None = None  # over the probe window
    samples: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, s into the window, ack ms)

    def record(self, kind: str, delivery: Delivery, sent_s: float) -> None:
        self.acks.setdefault(kind, []).append(delivery.latency_ms)
        self.samples.append((kind, sent_s, delivery.latency_ms))
        if delivery.status != 200:
            self.failed[kind] = self.failed.get(kind, 0) + 1

    def slowest(self) -> tuple[str, float, float] | None:
        return max(self.samples, key=lambda sample: sample[2], default=None)


async def ack_load(
    slack: LocalSlack,
    channel: str,
    in_flight: int,
    *,
    events: int,
    ticks: int,
    approves: int,
    interval_s: float,
    bot_pid: int | None = None,
) -> AckLoad:
    """Start `in_flight` slowly streaming runs, then send mentions, checkbox ticks and approve clicks one every
    `interval_s` (open loop: none waits for the previous answer) and record every ack."""
    result = AckLoad(in_flight)
    poll = 0.2
    # Cards to click: one per approve probe, and one more whose checkbox takes every tick.
    card_threads = await bounded_gather(
        [lambda: mention(slack, channel, RECORD_TASK) for _ in range(approves + 1)], SETUP_CONCURRENCY
    )
    cards = await asyncio.gather(*(t.wait_card(STEP_TIMEOUT_S, poll) for t in card_threads))
    tick_card, approve_cards = cards[0], list(cards[1:])
    block_id, action_id, option = checkbox_of(tick_card)

    workers = await bounded_gather(
        [lambda: mention(slack, channel, STREAM_TASK) for _ in range(in_flight)], SETUP_CONCURRENCY
    )
    # In flight means streaming: every progress message edited with model text at least once (so the burst of
    # starting N runs is over before the window opens).
    await slack.wait_for(
        lambda: all((t.progress() or {}).get("edited", 0) >= 1 for t in workers),
        timeout=STEP_TIMEOUT_S,
        interval=poll,
        description=f"{in_flight} runs to stream",
    )

    probe_threads: list[SlackThread] = []
    clicks: list[tuple[str, float]] = []  # (card ts, wall clock just before the click was sent)

    def now() -> float:
        """Seconds into the probe window (`started` is set when the window opens)."""
        return time.monotonic() - started

    async def event_probe() -> None:
        sent = now()
        thread = await mention(slack, channel, PROBE_TASK)
        probe_threads.append(thread)
        for delivery in thread.deliveries:
            result.record("event", delivery, sent)

    async def tick_probe(checked: bool) -> None:
        sent = now()
        result.record(
            "tick",
            await slack.toggle_checkbox(
                APPROVER, channel, tick_card["ts"], block_id, action_id, option, checked=checked
            ),
            sent,
        )

    async def approve_probe(card: dict[str, Any]) -> None:
        sent = now()
        clicks.append((card["ts"], time.time()))
        result.record("approve", await slack.click_button(APPROVER, channel, card["ts"], "approve"), sent)

    # Interleave the kinds evenly, so each sees the same load.
    plan: list[Callable[[], Coroutine[Any, Any, None]]] = []
    queues: list[list[Callable[[], Coroutine[Any, Any, None]]]] = [
        [event_probe] * events,
        [functools.partial(tick_probe, n % 2 == 0) for n in range(ticks)],
        [functools.partial(approve_probe, card) for card in approve_cards],
    ]
    while any(queues):
        for queue in queues:
            if queue:
                plan.append(queue.pop(0))

    meter = CpuMeter(bot_pid)
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    try:
        for n, probe in enumerate(plan):
            await asyncio.sleep(max(0.0, started + n * interval_s - time.monotonic()))
            tasks.append(asyncio.create_task(probe()))
        await asyncio.wait_for(asyncio.gather(*tasks), STEP_TIMEOUT_S)
    finally:
        for task in tasks:
            task.cancel()
    result.window_s = time.monotonic() - started
    result.cpu = meter.stop()
    result.still_in_flight = sum(1 for t in workers if not t.is_finished())

    def all_decided() -> bool:
        return all(decided_at(slack, channel, ts) is not None for ts, _ in clicks)

    with contextlib.suppress(TimeoutError):
        await slack.wait_for(all_decided, timeout=STEP_TIMEOUT_S, interval=poll)
    for ts, clicked in clicks:
        at = decided_at(slack, channel, ts)
        if at is None:
            result.cards_not_updated += 1
        else:
            result.click_to_card_ms.append((at - clicked) * 1000)

    # Let this level's work finish before the next level starts, so levels do not overlap.
    everything = workers + probe_threads + card_threads[1:]
    with contextlib.suppress(TimeoutError):
        await slack.wait_for(lambda: all(t.is_finished() for t in everything), timeout=2 * STEP_TIMEOUT_S, interval=0.5)
    return result


# --- 3: full cycles ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cycle:
    """mention -> card -> approve -> Done, as wall-clock seconds."""

    sent_at: float  # the mention was sent
    card_at: float  # the card was posted
    clicked_at: float  # the approve click was sent
    done_at: float  # the progress message first said Done
    seen_at: float  # the benchmark saw Done

    @property
    def bot_ms(self) -> float:
        """The bot's part: mention to card, plus click to Done (without the approver's reaction time)."""
        return ((self.card_at - self.sent_at) + (self.done_at - self.clicked_at)) * 1000


async def one_cycle(
    slack: LocalSlack, channel: str, timeout_s: float, poll_s: float, requester: str = REQUESTER
) -> Cycle:
    thread = await mention(slack, channel, RECORD_TASK, user=requester)
    card = await thread.wait_card(timeout_s, poll_s)
    clicked_at = time.time()
    click = await slack.click_button(APPROVER, channel, card["ts"], "approve")
    if click.status != 200:
        raise RuntimeError(f"the approve click was answered {click.status}: {click.body[:200]}")
    await thread.wait_done(timeout_s, poll_s)
    seen_at = time.time()
    done_at = thread.done_at() or seen_at
    return Cycle(thread.sent_at, float(card["ts"]), clicked_at, done_at, seen_at)


@dataclass
class CycleRun:
    label: str
    concurrency: int
    cycles: list[Cycle]
    started_at: float
    ended_at: float
    abandoned: int  # cycles still in progress when the time box closed
    cpu: CpuUse

    @property
    def bot_cpu_ms_per_cycle(self) -> float | None:
        return 1000 * self.cpu.bot_s / len(self.cycles) if self.cycles else None

    @property
    def elapsed_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def per_second(self) -> float:
        return len(self.cycles) / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def run_cycles(
    slack: LocalSlack,
    channel: str,
    label: str,
    *,
    concurrency: int,
    total: int | None = None,
    time_box_s: float | None = None,
    poll_s: float = 0.1,
    bot_pid: int | None = None,
) -> CycleRun:
    """`concurrency` people each doing cycles back to back, until `total` are done or the time box closes
    (cycles still running then are abandoned and not counted)."""
    if total is None and time_box_s is None:
        raise ValueError("give total, time_box_s or both")
    cycles: list[Cycle] = []
    remaining = [total if total is not None else 1 << 30]
    meter = CpuMeter(bot_pid)
    started_at = time.time()
    deadline = started_at + time_box_s if time_box_s is not None else None
    step_timeout = max(STEP_TIMEOUT_S, time_box_s or 0)

    # Each person asks as themselves (a per-person limit of active runs applies to each, as it would).
    people = [REQUESTER, *(f"U0PERSON{n:03d}" for n in range(1, concurrency))]
    for user in people[1:]:
        slack.add_user(user, user.lower())

    async def person(user: str) -> None:
        while remaining[0] > 0 and (deadline is None or time.time() < deadline):
            remaining[0] -= 1
            cycles.append(await one_cycle(slack, channel, step_timeout, poll_s, user))

    tasks = [asyncio.create_task(person(user)) for user in people]
    limit = time_box_s if time_box_s is not None else STEP_TIMEOUT_S * (total or 1)
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    ended_at = time.time() if deadline is None or not pending else deadline
    if deadline is None and cycles:
        ended_at = max(c.seen_at for c in cycles)
    return CycleRun(label, concurrency, cycles, started_at, ended_at, abandoned=len(pending), cpu=meter.stop())


# --- 4: chat.update calls ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateCalls:
    """chat.update calls the local Slack received between two moments (wall clock)."""

    start: float
    end: float
    times: list[float]
    rate_limited: int
    kinds: dict[str, int]  # what the edits showed: see `edit_kind`

    def peak_per_minute(self) -> int:
        """The most calls in any 60 s window."""
        peak, low = 0, 0
        for high, at in enumerate(self.times):
            while self.times[low] <= at - 60:
                low += 1
            peak = max(peak, high - low + 1)
        return peak

    def per_minute(self) -> float:
        return len(self.times) / self.seconds * 60 if self.seconds > 0 else 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def longest_silence(self) -> float:
        """The longest stretch without a chat.update call."""
        points = [self.start, *self.times, self.end]
        return max(b - a for a, b in pairwise(points))

    def saturated_at(self, budget: int) -> float | None:
        """When the `budget`-th call of a window went out: from then on the budget limits the bot."""
        return self.times[budget - 1] if len(self.times) >= budget else None


def edit_kind(text: str) -> str:
    """What a chat.update showed, from its fallback text: a progress state or a decided card."""
    if "calls approved by" in text:
        return "card decided"
    for words, kind in (("Done", "done"), ("Waiting for approval", "waiting"), ("Working", "working")):
        if words in text:
            return kind
    return "other"


def update_calls(slack: LocalSlack, since: float, until: float | None = None) -> UpdateCalls:
    until = time.time() if until is None else until
    entries = [e for e in slack.calls("chat.update") if since <= e["time"] <= until]
    kinds: dict[str, int] = {}
    for entry in entries:
        kind = edit_kind(str((entry.get("params") or {}).get("text", "")))
        kinds[kind] = kinds.get(kind, 0) + 1
    return UpdateCalls(
        since, until, sorted(e["time"] for e in entries), sum(1 for e in entries if e.get("status") == 429), kinds
    )
