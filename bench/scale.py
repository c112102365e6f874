"""The bot at the sizes a team reaches: a long thread (``/chatops history`` and the thread's Redis bytes), many
waiting cards (``/chatops pending`` with Slack's latency, the bot's RSS), a burst of mentions, one person's flood
against another person's decided card, and the Redis traffic of an approval cycle through the whole bot.

Everything is read like a person reads Slack (the bot's posts and edits, from the local Slack's call log) and
like an operator reads Redis (the run index under the bot's key prefix, ``MEMORY USAGE``). Every wait is bounded;
a bound that is reached is reported, never waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from graphs.keys import Keys
from sandbox.slack import Delivery, LocalSlack
from sandbox.slack.reading import all_text, header_of

from .harness import (
    APPROVER,
    FINAL,
    RECORD_TASK,
    REQUESTER,
    STATUS_MARKS,
    SlackBot,
    cpu_seconds,
    decided_at,
    mention,
    rss_kb,
    status_of,
)
from .redis_meter import Footprint, RedisMeter, Traffic, server_memory, thread_footprint
from .scenarios import STEP_TIMEOUT_S, one_cycle

CARD_NEEDED, CARD_DECIDED = "Approval needed", "Approval decided"
# What the answer of a slash command looks like once it holds the list (not an "on it" placeholder): a history
# lists checkpoints as "• `<id>` …", pending lists runs as "• run `<id>` …".
HISTORY_ANSWER = re.compile(r"History of run.*\n• `", re.S)
PENDING_ANSWER = re.compile(r"approval cards? waiting.*\n• run `", re.S)
SLASH_PATIENCE_S = 30.0  # how long the local Slack waits for a slash command's answer here (Slack: 3 s)
ANSWER_WAIT_S = 30.0  # how long an answer sent after the ack (response_url, chat.postEphemeral) may take
SEND_CONCURRENCY = 10  # deliveries in flight at once when the benchmark sends "as fast as the bot acks"
ADMIN = "U0ADMIN"
DONE_WAIT_S = 20.0  # in the flood: how long after the decided card the other person's Done is waited for


# --- the bot's messages, read incrementally from the call log --------------------------------------------------


@dataclass
class BotMessage:
    """One message the bot posted in a thread, as it reads now, and when it first showed each state."""

    ts: str
    posted_at: float
    text: str
    header: str
    status: str | None
    seen: dict[str, float] = field(default_factory=dict)  # status or header -> when it first showed

    def show(self, text: str, header: str, at: float) -> None:
        self.text, self.header, self.status = text, header, status_of(text)
        for what in (self.status, header):
            if what:
                self.seen.setdefault(what, at)

    @property
    def is_card(self) -> bool:
        return self.header in (CARD_NEEDED, CARD_DECIDED)


class BotWatch:
    """The bot's posts and edits per thread, from the local Slack's call log (only calls Slack accepted), read
    incrementally: polling it is cheap however many threads there are."""

    def __init__(self, slack: LocalSlack, min_interval_s: float = 0.05) -> None:
        self.slack = slack
        self._seq = 0
        self.threads: dict[tuple[str, str], list[BotMessage]] = {}
        self._where: dict[tuple[str, str], BotMessage] = {}
        self._min_interval_s = min_interval_s  # however many waiters poll, the log is read this often at most
        self._polled = 0.0

    def poll(self) -> BotWatch:
        if time.monotonic() - self._polled < self._min_interval_s:
            return self
        self._polled = time.monotonic()
        for entry in self.slack.calls(since=self._seq):
            self._seq = max(self._seq, int(entry["seq"]))
            response = entry.get("response") or {}
            if entry.get("status") != 200 or not response.get("ok"):
                continue
            params = entry.get("params") or {}
            method, at = entry.get("method"), float(entry["time"])
            if method == "chat.postMessage":
                channel, ts = str(response["channel"]), str(response["ts"])
                thread = str(params.get("thread_ts") or ts)
                message = BotMessage(ts, at, "", "", None)
                message.show(all_text(params), header_of(params), at)
                self.threads.setdefault((channel, thread), []).append(message)
                self._where[(channel, ts)] = message
            elif method == "chat.update":
                found = self._where.get((str(response.get("channel")), str(response.get("ts"))))
                if found is not None:
                    found.show(all_text(params), header_of(params), at)
        return self

    def replies(self, channel: str, thread_ts: str, after: str | None = None) -> list[BotMessage]:
        found = self.threads.get((channel, thread_ts), [])
        return [m for m in found if after is None or float(m.ts) > float(after)]

    def card(self, channel: str, thread_ts: str, after: str | None = None) -> BotMessage | None:
        cards = [m for m in self.replies(channel, thread_ts, after) if m.is_card]
        return cards[-1] if cards else None

    def progress(self, channel: str, thread_ts: str, after: str | None = None) -> BotMessage | None:
        """The first progress message of the thread (posted after `after`)."""
        return next((m for m in self.replies(channel, thread_ts, after) if m.seen.keys() & _STATUSES), None)


_STATUSES = frozenset(status for _, status in STATUS_MARKS)


# --- the bot process and its log ----------------------------------------------------------------------------


async def wait_idle(
    pid: int | None, *, below_pct: float = 25.0, window_s: float = 1.0, timeout_s: float = 60.0
) -> float:
    """Wait (bounded) until the bot used under `below_pct` of a core over `window_s`; the seconds waited."""
    started = time.monotonic()
    if pid is None:
        return 0.0
    while time.monotonic() - started < timeout_s:
        before = cpu_seconds(pid)
        await asyncio.sleep(window_s)
        if 100 * (cpu_seconds(pid) - before) / window_s < below_pct:
            break
    return time.monotonic() - started


@dataclass(frozen=True)
class LogProblems:
    errors: int  # lines logged at ERROR or CRITICAL
    tracebacks: int
    top: list[tuple[str, int]]  # the most frequent error lines (timestamps cut), with counts


LOG_LEVEL = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) (.*)$")
RUN_ID = re.compile(r"\b(?=[a-z]*[0-9])[a-z0-9]{8}\b")  # run ids in log lines, so lines about different runs group


def log_problems(path: Path, since_line: int = 0) -> LogProblems:
    """Errors and tracebacks in the bot's log (from line `since_line` on)."""
    try:
        lines = path.read_text(errors="replace").splitlines()[since_line:]
    except OSError:
        return LogProblems(0, 0, [])
    errors: Counter[str] = Counter()
    tracebacks = 0
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            tracebacks += 1
        elif match := LOG_LEVEL.match(line):
            errors[RUN_ID.sub("<run>", match.group(2))[:160]] += 1
    return LogProblems(sum(errors.values()), tracebacks, errors.most_common(3))


def log_lines(path: Path) -> int:
    try:
        return len(path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


async def run_statuses(redis_url: str, prefix: str) -> Counter[str]:
    """How many runs of the bot's run index (``<prefix>run:<thread>`` hashes) have each status."""
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        keys = Keys(prefix)
        names = [key async for key in client.scan_iter(match=keys.run("*"), count=1000)]
        statuses: Counter[str] = Counter()
        for start in range(0, len(names), 500):
            async with client.pipeline(transaction=False) as pipe:
                for name in names[start : start + 500]:
                    pipe.hget(name, "status")
                for status in await pipe.execute():
                    statuses[status or "(none)"] += 1
        return statuses
    finally:
        await client.aclose()


async def run_of_thread(redis_url: str, prefix: str, channel: str, thread_ts: str) -> str | None:
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        value = await client.get(Keys(prefix).slack_thread(channel, thread_ts))
        return str(value) if value else None
    finally:
        await client.aclose()


async def send_all(
    count: int, send: Callable[[int], Awaitable[list[Delivery]]], concurrency: int = SEND_CONCURRENCY
) -> list[Delivery]:
    """`send(i)` for i in range(count), `concurrency` at a time, each next one as soon as one is answered."""
    deliveries: list[Delivery] = []
    indexes = iter(range(count))

    async def sender() -> None:
        for index in indexes:
            deliveries.extend(await send(index))

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return deliveries


async def wait_count(count: Callable[[], int], target: int, *, bound_s: float, stall_s: float = 15.0) -> int:
    """Until `count()` reaches `target`, stops growing for `stall_s`, or `bound_s` passed; its last value."""
    started = changed = time.monotonic()
    last = count()
    while last < target and time.monotonic() - started < bound_s and time.monotonic() - changed < stall_s:
        await asyncio.sleep(0.5)
        if (now := count()) != last:
            last, changed = now, time.monotonic()
    return last


def add_users(slack: LocalSlack, prefix: str, count: int) -> list[str]:
    users = [f"{prefix}{n:04d}" for n in range(count)]
    for user in users:
        slack.add_user(user, user.lower())
    return users


# --- slash commands -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlashProbe:
    ack_ms: float  # the local Slack's own timing of the HTTP answer (Delivery.latency_ms)
    status: int  # 0: no answer within the patience
    answer_ms: float | None  # command sent -> the answer (the list) shown to the caller, wherever it came from

    @property
    def late(self) -> bool:
        """Slack would have given up: no HTTP 200 within 3 s."""
        return self.status != 200 or self.ack_ms > 3000


async def slash_probe(slack: LocalSlack, user: str, channel: str, text: str, answer: re.Pattern[str]) -> SlashProbe:
    """Send ``/chatops <text>`` and time its ack and its answer: the ack's own body, or what the bot sends after
    (response_url, chat.postEphemeral), whichever first shows text matching `answer`."""
    known = {e["message_ts"] for e in slack.ephemerals(user)}
    sent = time.time()
    delivery = await slack.slash_command(user, channel, "/chatops", text)

    def shown() -> float | None:
        stamps = [
            float(e["message_ts"])
            for e in slack.ephemerals(user)
            if e["message_ts"] not in known and answer.search(all_text(e))
        ]
        stamps += [
            float(c["time"])
            for c in slack.log.entries(kind="response_url")
            if c["time"] >= sent and answer.search(all_text(c.get("params") or {}))
        ]
        return min(stamps) if stamps else None

    with contextlib.suppress(TimeoutError):
        # A failed ack (Bolt answers 404 when a listener has not acked within 3 s) usually takes its answer with
        # it: a few seconds for one sent some other way is enough then.
        await slack.wait_for(shown, timeout=ANSWER_WAIT_S if delivery.status == 200 else 5.0, interval=0.05)
    at = shown()
    return SlashProbe(delivery.latency_ms, delivery.status, None if at is None else (at - sent) * 1000)


async def probe_command(
    bot: SlackBot, user: str, channel: str, text: str, answer: re.Pattern[str], probes: int
) -> list[SlashProbe]:
    """`probes` commands one after another, each after the bot went quiet; one late answer ends the level (the
    next would be as late, and the bot would still be busy with the last)."""
    found: list[SlashProbe] = []
    for _ in range(probes):
        await wait_idle(bot.pid)
        found.append(probe := await slash_probe(bot.slack, user, channel, text, answer))
        if probe.late:
            break
    await wait_idle(bot.pid)
    return found


# --- 7: a long thread: /chatops history and the thread's Redis bytes ------------------------------------------


@dataclass(frozen=True)
class ThreadLevel:
    turns: int
    probes: list[SlashProbe]
    footprint: Footprint
    used_memory_delta: int  # INFO used_memory now minus before the first turn (this Redis holds only this thread)
    turn_ms: list[float]  # the bot's part of the last few turns (mention -> card + click -> Done)


@dataclass
class LongThread:
    run_id: str | None = None
    levels: list[ThreadLevel] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)  # every turn, in order
    error: str | None = None


async def one_turn(
    bot: SlackBot, watch: BotWatch, channel: str, root: str | None, timeout_s: float
) -> tuple[str, float]:
    """One turn of a thread: a mention (in the thread once there is one) -> card -> approve -> Done. Returns the
    thread's ts and the bot's part of the turn in ms. A "still working" refusal is retried."""
    slack = bot.slack
    for _attempt in range(5):
        thread = await mention(slack, channel, RECORD_TASK, user=REQUESTER, thread_ts=root)
        asked = str(thread.deliveries[0].request["event"]["ts"])
        root = root or asked

        def answered(asked: str = asked, key: str = thread.ts) -> BotMessage | None:
            watch.poll()
            card = watch.card(channel, key, after=asked)
            if card is not None:
                return card
            replies = watch.replies(channel, key, after=asked)
            return replies[0] if replies and replies[0].status is None else None  # a refusal

        first = await slack.wait_for(answered, timeout=timeout_s, interval=0.05, description="a card")
        if first.is_card:
            break
        await asyncio.sleep(0.5)
    else:
        raise RuntimeError(f"the bot kept refusing a new turn in the thread: {first.text[:200]}")
    clicked = time.time()
    click = await slack.click_button(APPROVER, channel, first.ts, "approve")
    if click.status != 200:
        raise RuntimeError(f"the approve click was answered {click.status}: {click.body[:200]}")

    def done() -> BotMessage | None:
        watch.poll()
        progress = watch.progress(channel, thread.ts, after=asked)
        return progress if progress is not None and "done" in progress.seen else None

    progress = await slack.wait_for(done, timeout=timeout_s, interval=0.05, description="Done")
    return root, ((first.posted_at - thread.sent_at) + (progress.seen["done"] - clicked)) * 1000


async def wait_thread_free(redis_url: str, prefix: str, run_id: str, timeout_s: float = 10.0) -> None:
    """Until the run's lock and turn are given back (after Done shows, the bot may still be finishing)."""
    keys = Keys(prefix)
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await client.exists(keys.lock_prefix + run_id, keys.turn(run_id)):
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def long_thread(
    bot: SlackBot, redis_url: str, levels: Sequence[int], probes: int, say: Callable[[str], None]
) -> LongThread:
    """One thread grown turn by turn (each a full approval cycle); at each level of `levels` turns: the thread's
    Redis footprint, then `/chatops history <run>` by an admin. `redis_url` is a Redis of this thread alone."""
    slack, result = bot.slack, LongThread()
    slack.add_user(ADMIN, "admin")
    channel = slack.add_channel("bench-history")
    watch = BotWatch(slack)
    base_memory, _ = await server_memory(redis_url)
    root: str | None = None
    timeout = max(STEP_TIMEOUT_S, 60.0)
    try:
        for turn in range(1, max(levels) + 1):
            root, ms = await one_turn(bot, watch, channel, root, timeout)
            result.turn_ms.append(ms)
            if result.run_id is None:
                result.run_id = await run_of_thread(redis_url, bot.prefix, channel, root)
                if result.run_id is None:
                    raise RuntimeError("the bot recorded no run for the thread")
            await wait_thread_free(redis_url, bot.prefix, result.run_id)
            if turn not in levels:
                continue
            await wait_idle(bot.pid)
            footprint = await thread_footprint(redis_url, result.run_id)
            found = await probe_command(bot, ADMIN, channel, f"history {result.run_id}", HISTORY_ANSWER, probes)
            result.levels.append(
                ThreadLevel(turn, found, footprint, footprint.used_memory - base_memory, result.turn_ms[-3:])
            )
            say(
                f"  {turn} turns: {footprint.key_bytes / 1e6:.2f} MB in {footprint.keys} keys, history ack "
                + ", ".join(f"{p.ack_ms:.0f}" for p in found)
                + " ms"
            )
    except (TimeoutError, RuntimeError) as exc:
        result.error = f"stopped after {len(result.turn_ms)} turns: {exc}"[:300]
        say(f"  {result.error}")
    return result


# --- 8: many waiting cards: /chatops pending with Slack's latency, and the bot's RSS --------------------------


@dataclass(frozen=True)
class PendingLevel:
    cards: int  # cards waiting (posted and not decided) when probed
    asked: int  # runs asked for so far
    probes: list[SlashProbe]
    rss_kb: int | None


@dataclass
class ManyCards:
    latency_ms: float
    levels: list[PendingLevel] = field(default_factory=list)
    rss_before_kb: int | None = None  # after a warm-up, before any waiting card
    rss_after_kb: int | None = None  # with every card of the last level waiting, before it was probed
    paused: int = 0  # runs waiting for approval then
    redis_keys_delta: int = 0
    redis_bytes_delta: int = 0
    error: str | None = None

    @property
    def rss_growth_kb(self) -> int | None:
        if self.rss_before_kb is None or self.rss_after_kb is None:
            return None
        return self.rss_after_kb - self.rss_before_kb


async def many_cards(
    bot: SlackBot,
    redis_url: str,
    levels: Sequence[int],
    latency_ms: float,
    probes: int,
    say: Callable[[str], None],
    warmup_cycles: int = 3,
) -> ManyCards:
    """Runs paused for approval, up to each level of `levels` cards (asked by many people, so no per-person
    limit applies); at each level `/chatops pending` in their channel with `latency_ms` added to every Slack
    call. The bot's RSS before the first card and with the last level's cards waiting. `redis_url`: a Redis
    of this bot alone."""
    slack, result = bot.slack, ManyCards(latency_ms)
    channel = slack.add_channel("bench-pending")
    requesters = add_users(slack, "U0P", 50)
    watch = BotWatch(slack)
    try:
        warm = slack.add_channel("bench-pending-warmup")
        for _ in range(warmup_cycles):
            await one_cycle(slack, warm, STEP_TIMEOUT_S, 0.05)
        await wait_idle(bot.pid)
        result.rss_before_kb = rss_kb(bot.pid)
        memory_before, keys_before = await server_memory(redis_url)
        threads: list[str] = []

        async def ask(index: int) -> list[Delivery]:
            # Each sender waits for its card before it asks again: at most SEND_CONCURRENCY runs start at a
            # time (this sets the scene; the burst is table 9's business).
            thread = await mention(slack, channel, RECORD_TASK, user=requesters[index % len(requesters)])
            threads.append(thread.ts)
            with contextlib.suppress(TimeoutError):
                await slack.wait_for(
                    lambda: watch.poll().card(channel, thread.ts), timeout=STEP_TIMEOUT_S, interval=0.1
                )
            return thread.deliveries

        def waiting() -> int:
            watch.poll()
            return sum(
                1 for ts in threads if (card := watch.card(channel, ts)) is not None and card.header == CARD_NEEDED
            )

        for level in levels:
            await send_all(level - len(threads), ask)
            await wait_count(waiting, len(threads), bound_s=60 + level * 0.2)
            await wait_idle(bot.pid)
            cards, rss = waiting(), rss_kb(bot.pid)
            if level == levels[-1]:
                result.rss_after_kb, result.paused = rss, cards
                memory_after, keys_after = await server_memory(redis_url)
                result.redis_keys_delta, result.redis_bytes_delta = (
                    keys_after - keys_before,
                    memory_after - memory_before,
                )
            slack.api_latency_ms = latency_ms
            try:
                found = await probe_command(bot, APPROVER, channel, "pending", PENDING_ANSWER, probes)
            finally:
                slack.api_latency_ms = 0
            result.levels.append(PendingLevel(cards, len(threads), found, rss))
            say(f"  {cards} cards waiting: pending ack " + ", ".join(f"{p.ack_ms:.0f}" for p in found) + " ms")
    except (TimeoutError, RuntimeError) as exc:
        result.error = str(exc)[:300]
        say(f"  stopped: {result.error}")
    return result


# --- 9: a burst of mentions -------------------------------------------------------------------------------------


@dataclass
class Burst:
    mentions: int
    users: int
    acks: list[float] = field(default_factory=list)
    non_200: int = 0
    sent_s: float = 0.0  # delivering every mention
    settled_s: float = 0.0  # from the first mention until nothing changed any more (or the bound)
    settled: bool = False  # every mention accounted for before the bound
    carded: int = 0  # threads with an approval card
    said_queued: int = 0  # threads whose progress message said "Queued" at some point
    queued_now: int = 0  # ... and still says so
    working_now: int = 0  # progress message still says Working
    refused: int = 0  # the bot answered, but with no progress message (e.g. a per-person limit)
    no_reply: int = 0  # the bot never answered in the thread: the event was lost
    failed_shown: int = 0  # progress message says Failed
    statuses: dict[str, int] = field(default_factory=dict)  # the run index's statuses at the end
    log: LogProblems | None = None


async def burst(
    bot: SlackBot, redis_url: str, count: int, users: int, bound_s: float, say: Callable[[str], None]
) -> Burst:
    """`count` mentions by `users` people (round robin) delivered as fast as the bot acks them (a few at a
    time, each next one when one is answered), then a bounded wait until every thread has its card, a refusal or
    an end, or nothing has changed for a while."""
    slack, result = bot.slack, Burst(count, users)
    channel = slack.add_channel("bench-burst")
    people = add_users(slack, "U0B", users)
    watch = BotWatch(slack)
    threads: list[str] = []
    log_start = log_lines(bot.log_path)

    async def ask(index: int) -> list[Delivery]:
        thread = await mention(slack, channel, RECORD_TASK, user=people[index % len(people)])
        threads.append(thread.ts)
        return thread.deliveries

    started = time.monotonic()
    deliveries = await send_all(count, ask)
    result.sent_s = time.monotonic() - started
    result.acks = [d.latency_ms for d in deliveries]
    result.non_200 = sum(1 for d in deliveries if d.status != 200)
    say(f"  {count} mentions delivered in {result.sent_s:.1f}s; waiting for the bot to settle")

    def tally() -> tuple[int, ...]:
        watch.poll()
        carded = said_queued = queued = working = refused = silent = failed = accounted = 0
        for ts in threads:
            replies = watch.replies(channel, ts)
            progress = watch.progress(channel, ts)
            card = watch.card(channel, ts)
            carded += card is not None
            if progress is not None:
                said_queued += "queued" in progress.seen
                queued += progress.status == "queued"
                working += progress.status == "working"
                failed += progress.status == "failed"
            elif replies:
                refused += 1
            else:
                silent += 1
            accounted += (
                card is not None
                or (progress is None and bool(replies))
                or (progress is not None and progress.status in FINAL)
            )
        return carded, said_queued, queued, working, refused, silent, failed, accounted

    last, changed = tally(), time.monotonic()
    statuses: Counter[str] = Counter()
    while time.monotonic() - started < bound_s:
        await asyncio.sleep(1.0)
        now = tally()
        statuses = await run_statuses(redis_url, bot.prefix)
        if now[-1] >= count and not statuses.get("running"):
            result.settled = True
            break
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > 20:
            break  # nothing moved for 20 s: what is left is stuck
    result.settled_s = time.monotonic() - started
    (
        result.carded,
        result.said_queued,
        result.queued_now,
        result.working_now,
        result.refused,
        result.no_reply,
        result.failed_shown,
        _,
    ) = tally()
    result.statuses = dict(await run_statuses(redis_url, bot.prefix))
    result.log = log_problems(bot.log_path, log_start)
    return result


# --- 10: one person's flood against another person's decided card -------------------------------------------


@dataclass
class Flood:
    mentions: int
    bound_s: float
    acks: list[float] = field(default_factory=list)
    non_200: int = 0
    sent_s: float = 0.0
    flood_cards_at_click: int = 0  # the flood's cards posted when the other person's approve was clicked
    flood_refused: int = 0  # the flood's mentions the bot answered without a progress message (a limit)
    card_ms: float | None = None  # the other person's mention -> their card posted
    decided_ms: float | None = None  # approve click -> the card rewritten "Approval decided" (None: not in time)
    done_ms: float | None = None  # approve click -> their progress message says Done
    error: str | None = None


async def flood(
    bot: SlackBot, count: int, bound_s: float, say: Callable[[str], None], clicked: asyncio.Event | None = None
) -> Flood:
    """One person sends `count` mentions as fast as the bot acks; then someone else asks for a task in another
    channel and an approver approves its card: how long until that card says "Approval decided" (bounded).
    `clicked` is set once the approve click is sent (or the flood gave up before): from then on it only waits."""
    try:
        return await _flood(bot, count, bound_s, say, clicked)
    finally:
        if clicked is not None:
            clicked.set()


async def _flood(
    bot: SlackBot, count: int, bound_s: float, say: Callable[[str], None], clicked: asyncio.Event | None
) -> Flood:
    slack, result = bot.slack, Flood(count, bound_s)
    flooded, elsewhere = slack.add_channel("bench-flood"), slack.add_channel("bench-other")
    flooder, other = "U0FLOOD", "U0CAROL"
    slack.add_user(flooder, "flood")
    slack.add_user(other, "carol")
    watch = BotWatch(slack)
    threads: list[str] = []

    async def ask(_: int) -> list[Delivery]:
        thread = await mention(slack, flooded, RECORD_TASK, user=flooder)
        threads.append(thread.ts)
        return thread.deliveries

    started = time.monotonic()
    deliveries = await send_all(count, ask)
    result.sent_s = time.monotonic() - started
    result.acks = [d.latency_ms for d in deliveries]
    result.non_200 = sum(1 for d in deliveries if d.status != 200)
    say(f"  {count} mentions by one person delivered in {result.sent_s:.1f}s; another person asks now")
    try:
        thread = await mention(slack, elsewhere, RECORD_TASK, user=other)

        def card() -> BotMessage | None:
            watch.poll()
            return watch.card(elsewhere, thread.ts)

        posted = await slack.wait_for(card, timeout=bound_s, interval=0.1, description="the other person's card")
        result.card_ms = (posted.posted_at - thread.sent_at) * 1000
        watch.poll()
        result.flood_cards_at_click = sum(1 for ts in threads if watch.card(flooded, ts) is not None)
        clicked_at = time.time()
        click = await slack.click_button(APPROVER, elsewhere, posted.ts, "approve")
        if clicked is not None:
            clicked.set()
        if click.status != 200:
            raise RuntimeError(f"the approve click was answered {click.status}: {click.body[:200]}")

        def decided() -> float | None:
            # From the message's edit history: however the bot rewrote it (chat.update or the response_url).
            return decided_at(slack, elsewhere, posted.ts)

        with contextlib.suppress(TimeoutError):
            at = await slack.wait_for(decided, timeout=bound_s, interval=0.1)
            result.decided_ms = (at - clicked_at) * 1000
            say(f"  the other person's card was decided {result.decided_ms / 1000:.1f}s after the click")

        def done() -> float | None:
            watch.poll()
            progress = watch.progress(elsewhere, thread.ts)
            return progress.seen.get("done") if progress is not None else None

        # Done is waited for only once the card was decided in time, and only DONE_WAIT_S more.
        with contextlib.suppress(TimeoutError):
            at = await slack.wait_for(done, timeout=DONE_WAIT_S if result.decided_ms is not None else 0, interval=0.1)
            result.done_ms = (at - clicked_at) * 1000
    except (TimeoutError, RuntimeError) as exc:
        result.error = str(exc)[:300]
        say(f"  {result.error}")
    watch.poll()
    result.flood_refused = sum(
        1 for ts in threads if watch.progress(flooded, ts) is None and watch.replies(flooded, ts)
    )
    return result


# --- 6: Redis traffic of an approval cycle through the whole bot -------------------------------------------------


@dataclass(frozen=True)
class BotTraffic:
    cycles: int
    total: Traffic
    seconds: float

    def per_cycle(self, value: int) -> float:
        return value / self.cycles if self.cycles else 0.0


async def bot_cycle_traffic(bot: SlackBot, meter: RedisMeter, cycles: int, warmup: int = 2) -> BotTraffic:
    """`cycles` sequential approval cycles through the bot, whose Redis is behind `meter`: everything the bot
    sent and got meanwhile (its sweeper and budget included), after `warmup` cycles."""
    channel = bot.slack.add_channel("bench-metered")
    for _ in range(warmup):
        await one_cycle(bot.slack, channel, STEP_TIMEOUT_S, 0.05)
    await wait_idle(bot.pid, window_s=0.5)
    before, started = meter.reading(), time.monotonic()
    for _ in range(cycles):
        await one_cycle(bot.slack, channel, STEP_TIMEOUT_S, 0.05)
    await asyncio.sleep(0.3)  # the last cycle's writes after Done showed
    return BotTraffic(cycles, meter.reading() - before, time.monotonic() - started)


def top_commands(traffic: Traffic, per: int, count: int = 6) -> str:
    ranked = sorted(traffic.by_command.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{name} {n / per:.0f}" for name, n in ranked)
