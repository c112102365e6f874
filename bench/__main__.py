"""``python -m bench``: runs every measurement, prints one table per section and a summary (``--json PATH``
also writes them as JSON). Owns the run's order, its sizes (full or ``--quick``) and the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from graphs.embedded_redis import EmbeddedRedis

from .floor import CycleSample, bare_langgraph_cycles, model_floor_cycles, runs_layer_cycles
from .harness import (
    BotConfig,
    ModelServer,
    SlackBot,
    child_pids,
    model_rules,
    write_runbooks,
)
from .redis_meter import RedisMeter
from .scale import (
    DONE_WAIT_S,
    SLASH_PATIENCE_S,
    BotTraffic,
    Burst,
    Flood,
    LongThread,
    ManyCards,
    SlashProbe,
    bot_cycle_traffic,
    burst,
    flood,
    long_thread,
    many_cards,
    top_commands,
)
from .scenarios import (
    AckLoad,
    CycleRun,
    UpdateCalls,
    ack_load,
    run_cycles,
    update_calls,
)
from .stats import SLACK_ACK_DEADLINE_MS, Table, percentile, summary

SLACK_TIER3_PER_MINUTE = 50  # what the local Slack allows on chat.update, like Slack
BUDGET_PER_MINUTE = 45  # the bot's default CHATOPS_UPDATE_BUDGET


MODEL_FLOOR = "bare LangGraph + AsyncRedisSaver + ChatOpenAI"


def budgeted(concurrency: int) -> BotConfig:
    return BotConfig(
        f"budgeted-{concurrency}", update_budget=BUDGET_PER_MINUTE, slack_update_limit=SLACK_TIER3_PER_MINUTE
    )


def run_label(concurrency: int) -> str:
    return "sequential" if concurrency == 1 else f"{concurrency} at once"


# Nothing holds it back: no chat.update budget or Slack limit, and (for bots that have them) room for every run
# table 1 starts to work at once (50 in flight + probes + cards), no per-person limit, and a Redis pool big enough
# for that many workers: its rows show the bot's own overhead with N runs really working.
NO_RUN_LIMITS = (
    ("CHATOPS_MAX_ACTIVE_RUNS", "100"),
    ("CHATOPS_MAX_RUNS_PER_USER", "0"),
    ("CHATOPS_REDIS_MAX_CONNECTIONS", "400"),
)
UNCONSTRAINED = BotConfig("unconstrained", update_budget=100_000, slack_update_limit=None, env=NO_RUN_LIMITS)
# Its Redis behind the counting proxy: what a whole approval cycle costs in Redis traffic.
METERED = BotConfig("metered", update_budget=100_000, slack_update_limit=None)
# A long thread read by an admin; the local Slack waits longer than Slack's 3 s to show how late an answer is.
HISTORY = BotConfig(
    "history",
    update_budget=100_000,
    slack_update_limit=None,
    delivery_timeout_s=SLASH_PATIENCE_S,
    env=(("CHATOPS_ADMINS", "U0ADMIN"),),
)
PENDING = BotConfig("pending", update_budget=100_000, slack_update_limit=None, delivery_timeout_s=SLASH_PATIENCE_S)
# A burst and a flood meet the budget Slack imposes, as in production. The flood's bot has no per-person limit
# (for bots that have one): all of one person's runs are admitted and their edits meet the budget, so the row
# shows the budget's fairness, not the limit (which would refuse most of a flood at once).
BURST = BotConfig("burst", update_budget=BUDGET_PER_MINUTE, slack_update_limit=SLACK_TIER3_PER_MINUTE)
FLOOD = BotConfig(
    "flood",
    update_budget=BUDGET_PER_MINUTE,
    slack_update_limit=SLACK_TIER3_PER_MINUTE,
    env=(("CHATOPS_MAX_RUNS_PER_USER", "0"),),
)


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""

    name: str
    in_flight: tuple[int, ...]
    events: int  # mentions sent per level (each is two deliveries: message + app_mention)
    ticks: int  # checkbox ticks per level
    approves: int  # approve clicks per level
    probe_interval_s: float
    stream_words: int  # an in-flight run streams this many words ...
    chunk_delay_s: float  # ... this far apart
    seq_cycles: int
    conc_cycles: int
    concurrency: int
    budget_concurrency: tuple[int, ...]  # one budgeted run (own bot, Slack and budget) per entry
    budget_box_s: float  # each budgeted run's time box
    floor_cycles: int
    meter_cycles: int  # cycles counted through the Redis meter, per layer
    history_turns: tuple[int, ...]  # a long thread: history ack and Redis bytes at these many turns
    history_probes: int
    pending_cards: tuple[int, ...]  # /chatops pending with these many cards waiting
    pending_probes: int
    api_latency_ms: float  # added to every Slack call while /chatops pending is probed
    burst: int  # mentions in the burst ...
    burst_users: int  # ... by this many people
    burst_bound_s: float
    flood: int  # one person's mentions before another person's card is approved
    flood_bound_s: float


FULL = Plan(
    "full",
    in_flight=(1, 10, 50),
    events=10,
    ticks=20,
    approves=10,
    probe_interval_s=0.1,
    stream_words=150,
    chunk_delay_s=0.1,
    seq_cycles=10,
    conc_cycles=30,
    concurrency=10,
    budget_concurrency=(1, 10),
    budget_box_s=60.0,
    floor_cycles=20,
    meter_cycles=5,
    history_turns=(1, 10, 30, 100),
    history_probes=3,
    pending_cards=(10, 100, 1000),
    pending_probes=3,
    api_latency_ms=150.0,
    burst=1000,
    burst_users=250,
    burst_bound_s=240.0,
    flood=200,
    flood_bound_s=150.0,
)
QUICK = Plan(
    "quick",
    in_flight=(1, 10),
    events=4,
    ticks=8,
    approves=4,
    probe_interval_s=0.1,
    stream_words=35,
    chunk_delay_s=0.1,
    seq_cycles=4,
    conc_cycles=10,
    concurrency=5,
    budget_concurrency=(5,),
    budget_box_s=8.0,
    floor_cycles=8,
    meter_cycles=3,
    history_turns=(1, 10),
    history_probes=3,
    pending_cards=(10, 100),
    pending_probes=3,
    api_latency_ms=150.0,
    burst=100,
    burst_users=25,
    burst_bound_s=90.0,
    flood=50,
    flood_bound_s=30.0,
)


@dataclass
class Measurements:
    floor: list[CycleSample]
    model_floor: list[CycleSample]
    runs_layer: list[CycleSample]
    loads: list[AckLoad]
    free_runs: list[CycleRun]
    free_updates: list[UpdateCalls]
    budget_runs: list[CycleRun]
    budget_updates: list[UpdateCalls]
    budget_peak_rates: list[int]
    shutdown_s: dict[str, float]
    floor_metered: list[CycleSample]
    model_floor_metered: list[CycleSample]
    runs_metered: list[CycleSample]
    bot_traffic: BotTraffic
    thread: LongThread
    cards: ManyCards
    burst: Burst
    flood: Flood


class Progress:
    """One line per step on stderr, with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {what}", file=sys.stderr, flush=True)


async def measure(plan: Plan, workdir: Path, say: Progress) -> Measurements:
    # SIGTERM takes the same path as Ctrl-C: cancel, and let the ExitStack stop everything started.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    runbooks = write_runbooks(workdir / "runbooks")
    with contextlib.ExitStack() as stack:
        say("starting Redis 8 and the scripted model")
        redis = EmbeddedRedis(persistent=False).start()
        stack.callback(redis.stop)
        model = ModelServer(model_rules(plan.stream_words, plan.chunk_delay_s), workdir).start()
        stack.callback(model.stop)

        def new_bot(config: BotConfig, redis_url: str = redis.url) -> SlackBot:
            bot = SlackBot(config, redis_url=redis_url, model_url=model.base_url, runbooks=runbooks, workdir=workdir)
            stack.callback(bot.stop)
            return bot

        def own_redis() -> EmbeddedRedis:
            """A Redis for one scenario alone: its memory and keys are that scenario's, and it leaves nothing for
            the next one to wade through."""
            own = EmbeddedRedis(persistent=False).start()
            stack.callback(own.stop)
            return own

        say(
            f"floor: {plan.floor_cycles} cycles on bare LangGraph + AsyncRedisSaver (without and with the model), "
            "then on the Runs layer"
        )
        floor = await bare_langgraph_cycles(redis.url, runbooks / "record.sh", plan.floor_cycles)
        model_floor = await model_floor_cycles(redis.url, model.base_url, runbooks, plan.floor_cycles)
        runs_layer = await runs_layer_cycles(redis.url, model.base_url, runbooks, plan.floor_cycles)

        say(f"Redis traffic: {plan.meter_cycles} cycles per layer through a counting proxy (bare, Runs, the bot)")
        meter = RedisMeter(redis.url).start()
        stack.callback(meter.stop)
        floor_metered = await bare_langgraph_cycles(meter.url, runbooks / "record.sh", plan.meter_cycles, meter)
        model_floor_metered = await model_floor_cycles(meter.url, model.base_url, runbooks, plan.meter_cycles, meter)
        runs_metered = await runs_layer_cycles(meter.url, model.base_url, runbooks, plan.meter_cycles, meter)
        metered = new_bot(METERED, meter.url)
        await asyncio.to_thread(metered.start)
        traffic = await bot_cycle_traffic(metered, meter, plan.meter_cycles)
        await asyncio.to_thread(metered.stop)
        meter.stop()

        configs = [UNCONSTRAINED, *(budgeted(c) for c in plan.budget_concurrency), FLOOD]
        say(f"starting {len(configs)} bots, each with its own local Slack: " + ", ".join(c.name for c in configs))
        bots = [new_bot(config) for config in configs]
        await asyncio.gather(*(asyncio.to_thread(bot.start) for bot in bots))
        free, budget_bots, flood_bot = bots[0], bots[1:-1], bots[-1]

        # The flood and the budgeted runs mostly wait for their budgets: the flood is sent first (the busy part),
        # then both wait side by side, each with its own bot, Slack and budget.
        say(f"flood: {plan.flood} mentions by one person, then another person's card is approved")
        clicked = asyncio.Event()
        flooding = asyncio.create_task(flood(flood_bot, plan.flood, plan.flood_bound_s, say, clicked))
        await asyncio.wait([flooding, asyncio.create_task(clicked.wait())], return_when=asyncio.FIRST_COMPLETED)

        # The budget is a 60 s sliding window: each budgeted run gets its own bot, Slack and window, and they
        # run side by side for the same time box (they mostly wait for the budget, so they barely compete).
        say(
            f"budgeted cycles for {plan.budget_box_s:.0f}s: "
            + ", ".join(run_label(c) for c in plan.budget_concurrency)
            + " (side by side)"
        )
        budget_runs = list(
            await asyncio.gather(
                *(
                    run_cycles(
                        bot.slack,
                        "C0OPS",
                        run_label(c),
                        concurrency=c,
                        time_box_s=plan.budget_box_s,
                        poll_s=0.05 if c == 1 else 0.1,
                        bot_pid=bot.pid,
                    )
                    for bot, c in zip(budget_bots, plan.budget_concurrency, strict=True)
                )
            )
        )
        budget_updates = [
            update_calls(bot.slack, run.started_at, run.ended_at)
            for bot, run in zip(budget_bots, budget_runs, strict=True)
        ]
        budget_peaks = [bot.slack.peak_rate("chat.update") for bot in budget_bots]
        # On SIGTERM their updaters wait up to 10 s for budget to deliver what it held back; they sit idle
        # meanwhile, so let them stop in the background.
        stopping = [asyncio.create_task(asyncio.to_thread(bot.stop)) for bot in budget_bots]
        if not flooding.done():
            say("waiting for the flood's decided card")
        flooded = await flooding
        stopping.append(asyncio.create_task(asyncio.to_thread(flood_bot.stop)))

        loads: list[AckLoad] = []
        free_updates: list[UpdateCalls] = []
        for n in plan.in_flight:
            say(f"acks with {n} run(s) in flight")
            since = time.time()
            loads.append(
                await ack_load(
                    free.slack,
                    free.slack.add_channel(f"bench-load-{n}"),
                    n,
                    events=plan.events,
                    ticks=plan.ticks,
                    approves=plan.approves,
                    interval_s=plan.probe_interval_s,
                    bot_pid=free.pid,
                )
            )
            free_updates.append(update_calls(free.slack, since))
        free_runs: list[CycleRun] = []
        for label, concurrency, total, poll in (
            ("sequential", 1, plan.seq_cycles, 0.05),
            (f"{plan.concurrency} at once", plan.concurrency, plan.conc_cycles, 0.1),
        ):
            say(f"unconstrained cycles, {label}")
            channel = free.slack.add_channel(f"bench-free-{concurrency}")
            run = await run_cycles(
                free.slack, channel, label, concurrency=concurrency, total=total, poll_s=poll, bot_pid=free.pid
            )
            free_runs.append(run)
            free_updates.append(update_calls(free.slack, run.started_at, run.ended_at))
        say("stopping the bots")
        shutdown = {UNCONSTRAINED.name: await asyncio.to_thread(free.stop)}
        for bot, seconds in zip([*budget_bots, flood_bot], await asyncio.gather(*stopping), strict=True):
            shutdown[bot.config.name] = seconds

        say(
            f"a long thread: {max(plan.history_turns)} turns, /chatops history at "
            + ", ".join(map(str, plan.history_turns))
        )
        thread_redis = own_redis()
        history_bot = new_bot(HISTORY, thread_redis.url)
        await asyncio.to_thread(history_bot.start)
        thread = await long_thread(history_bot, thread_redis.url, plan.history_turns, plan.history_probes, say)
        await asyncio.to_thread(history_bot.stop)
        thread_redis.stop()

        say(
            "waiting cards: /chatops pending at "
            + ", ".join(map(str, plan.pending_cards))
            + f" cards with {plan.api_latency_ms:.0f} ms per Slack call; the bot's RSS"
        )
        cards_redis = own_redis()
        pending_bot = new_bot(PENDING, cards_redis.url)
        await asyncio.to_thread(pending_bot.start)
        cards = await many_cards(
            pending_bot, cards_redis.url, plan.pending_cards, plan.api_latency_ms, plan.pending_probes, say
        )
        await asyncio.to_thread(pending_bot.stop)
        cards_redis.stop()

        say(f"burst: {plan.burst} mentions by {plan.burst_users} people as fast as the bot acks")
        burst_redis = own_redis()
        burst_bot = new_bot(BURST, burst_redis.url)
        await asyncio.to_thread(burst_bot.start)
        burst_result = await burst(burst_bot, burst_redis.url, plan.burst, plan.burst_users, plan.burst_bound_s, say)
        shutdown[BURST.name] = await asyncio.to_thread(burst_bot.stop)
        burst_redis.stop()

        if model.unmatched():
            say(f"warning: the scripted model refused {model.unmatched()} request(s); see {model.log_path}")
    return Measurements(
        floor,
        model_floor,
        runs_layer,
        loads,
        free_runs,
        free_updates,
        budget_runs,
        budget_updates,
        budget_peaks,
        shutdown,
        floor_metered,
        model_floor_metered,
        runs_metered,
        traffic,
        thread,
        cards,
        burst_result,
        flooded,
    )


# --- the report ------------------------------------------------------------------------------------------------


def machine_info(plan: Plan) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mode": plan.name,
        "cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def ms(samples: Sequence[float], q: float) -> float | None:
    return percentile(samples, q)


def tables(m: Measurements, plan: Plan) -> list[Table]:
    acks = Table(
        "1. Ack latency with N runs in flight (ms, as Slack sees it; deadline 3000 ms)",
        ["in flight", "kind", "n", "p50", "p99", "max", ">3 s", "non-200", "still working"],
    )
    for load in m.loads:
        for kind in ("event", "tick", "approve"):
            s = summary(load.acks.get(kind, []))
            acks.add(
                load.in_flight,
                kind,
                s["n"],
                s["p50"],
                s["p99"],
                s["max"],
                s["over_3s"],
                load.failed.get(kind, 0),
                f"{load.still_in_flight}/{load.in_flight}",
            )
    acks.notes = [
        "in flight = runs whose model streams a reply slowly "
        f"({plan.stream_words} words, {plan.chunk_delay_s:g}s apart), each edited by chat.update as it goes",
        f"probes, one every {plan.probe_interval_s:g}s without waiting for answers: event = message + app_mention "
        "of a new mention; tick = a checkbox block_action; approve = the Approve button on a pending card",
        "the window opens once every in-flight run has streamed into its progress message; still working = "
        "in-flight runs not yet ended when the last probe was answered",
        "slowest ack per level: "
        + "; ".join(
            f"{load.in_flight} in flight: {kind} {latency:.0f} ms, sent {sent:.1f}s into the window"
            for load in m.loads
            if (slow := load.slowest())
            for kind, sent, latency in [slow]
        ),
    ]

    cards = Table(
        '2. Click to card updated (ms: approve click sent -> card rewritten to "Approval decided")',
        ["in flight", "clicks", "p50", "p99", "max", "not updated", "bot CPU %", "bench CPU %"],
    )
    for load in m.loads:
        s = summary(load.click_to_card_ms)
        cpu = load.cpu
        cards.add(
            load.in_flight,
            s["n"],
            s["p50"],
            s["p99"],
            s["max"],
            load.cards_not_updated,
            cpu.bot_pct if cpu else None,
            cpu.bench_pct if cpu else None,
        )
    cards.notes = [
        "the moment the card changed is the local Slack's own stamp of the chat.update (its edit history)",
        "CPU % over the probe window (100 = one core): the bot process, and this process (the local Slack's "
        "server thread and the deliveries)",
    ]

    cycles = Table(
        '3. Full cycles: mention -> card -> approve -> progress "Done" (scripted model)',
        [
            "chat.update",
            "run",
            "cycles",
            "seconds",
            "cycles/s",
            "cycles/min",
            "bot ms p50",
            "bot ms p99",
            "abandoned",
            "budget used up at s",
            "bot CPU ms/cycle",
            "bot CPU %",
        ],
    )
    cycles.digits = {"seconds": 1, "cycles/s": 2, "cycles/min": 1, "budget used up at s": 1}
    for label, runs, run_updates in (
        ("unconstrained", m.free_runs, m.free_updates[len(m.loads) :]),
        (f"budget {BUDGET_PER_MINUTE}/min", m.budget_runs, m.budget_updates),
    ):
        for run, calls in zip(runs, run_updates, strict=True):
            bot_ms = [c.bot_ms for c in run.cycles]
            full = calls.saturated_at(BUDGET_PER_MINUTE) if runs is m.budget_runs else None
            cycles.add(
                label,
                run.label,
                len(run.cycles),
                run.elapsed_s,
                run.per_second,
                run.per_second * 60,
                ms(bot_ms, 50),
                ms(bot_ms, 99),
                run.abandoned,
                None if full is None else full - run.started_at,
                run.bot_cpu_ms_per_cycle,
                run.cpu.bot_pct,
            )
    cycles.notes = [
        "bot ms = (mention sent -> card posted) + (approve sent -> Done shown): the approver's reaction time excluded",
        "unconstrained: CHATOPS_UPDATE_BUDGET=100000 and no Slack limit; budget: CHATOPS_UPDATE_BUDGET=45 and the "
        "local Slack limits chat.update to 50/min, like Slack's Tier 3",
        f"budgeted runs are time-boxed ({plan.budget_box_s:g}s, each with its own bot, Slack and budget); cycles "
        "still running when the box closes are abandoned, not counted",
        "budget used up at = seconds into the run when the 45th chat.update went out; after that no edit, so no "
        "card decision and no Done, can be shown until the first edit leaves the 60 s window",
    ]
    if plan.budget_box_s < 60:
        cycles.notes.append(
            "this box is shorter than the 60 s window, so budgeted cycles/s shows the first burst, "
            "not the long-run rate (45/min / calls per cycle); run without --quick for that"
        )

    updates = Table(
        "4. chat.update calls against the budget",
        [
            "bot",
            "run",
            "calls",
            "429s",
            "peak/60 s",
            "calls/min",
            "budget",
            "Slack limit",
            "calls/cycle",
            "longest silence s",
        ],
    )
    updates.digits = {"calls/min": 1, "calls/cycle": 1, "longest silence s": 1}
    rows: list[tuple[str, str, UpdateCalls, int]] = []
    for load, calls in zip(m.loads, m.free_updates, strict=False):  # the cycle runs' updates follow
        rows.append(("unconstrained", f"acks, {load.in_flight} in flight", calls, 0))
    for run, calls in zip(m.free_runs, m.free_updates[len(m.loads) :], strict=True):
        rows.append(("unconstrained", f"cycles, {run.label}", calls, len(run.cycles)))
    for run, calls in zip(m.budget_runs, m.budget_updates, strict=True):
        rows.append(("budgeted", f"cycles, {run.label}", calls, len(run.cycles)))
    for bot, label, calls, n in rows:
        budgeted = bot == "budgeted"
        updates.add(
            bot,
            label,
            len(calls.times),
            calls.rate_limited,
            calls.peak_per_minute(),
            calls.per_minute(),
            BUDGET_PER_MINUTE if budgeted else None,
            SLACK_TIER3_PER_MINUTE if budgeted else None,
            len(calls.times) / n if n else None,
            calls.longest_silence(),
        )
    worst_peak = max(m.budget_peak_rates)
    updates.notes = [
        "calls = every chat.update the local Slack received, 429s included; peak/60 s = most calls in any 60 s",
        f'budgeted bots: peak_rate("chat.update") = {" and ".join(map(str, m.budget_peak_rates))} '
        f"(budget {BUDGET_PER_MINUTE}, Slack {SLACK_TIER3_PER_MINUTE}): "
        + ("never above the budget" if worst_peak <= BUDGET_PER_MINUTE else "ABOVE THE BUDGET"),
        "unconstrained rows show the demand: the edits the bot sends when nothing holds it back",
        "longest silence = the longest stretch of the run with no chat.update at all (nothing on screen changes)",
        *(
            f"budgeted, {run.label}: the {len(calls.times)} edits showed "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(calls.kinds.items(), key=lambda kv: -kv[1]))
            + f"; {len(run.cycles)} cycles done, {run.abandoned} abandoned"
            for run, calls in zip(m.budget_runs, m.budget_updates, strict=True)
        ),
    ]

    floor_ms = _median([s.total_ms for s in m.floor])
    layers = Table(
        "5. The floor: one approval cycle, sequential (ms)",
        ["layer", "cycles", "to pause p50", "resume to end p50", "cycle p50", "cycle p99", "x floor"],
    )
    layers.digits = {"x floor": 1}
    for name, samples in (
        ("bare LangGraph + AsyncRedisSaver", m.floor),
        (MODEL_FLOOR, m.model_floor),
        ("graphs.runs.Runs (scripted model)", m.runs_layer),
    ):
        total = [s.total_ms for s in samples]
        layers.add(
            name,
            len(samples),
            ms([s.to_pause_ms for s in samples], 50),
            ms([s.resume_ms for s in samples], 50),
            ms(total, 50),
            ms(total, 99),
            _ratio(ms(total, 50), floor_ms),
        )
    seq = m.free_runs[0]
    bot_ms = [c.bot_ms for c in seq.cycles]
    to_card = [(c.card_at - c.sent_at) * 1000 for c in seq.cycles]
    after = [(c.done_at - c.clicked_at) * 1000 for c in seq.cycles]
    layers.add(
        "the bot over the local Slack (unconstrained)",
        len(bot_ms),
        ms(to_card, 50),
        ms(after, 50),
        ms(bot_ms, 50),
        ms(bot_ms, 99),
        _ratio(ms(bot_ms, 50), floor_ms),
    )
    layers.notes = [
        'all with durability="sync" on the same Redis; the floor\'s plan step proposes the call without a model; '
        "the floor with ChatOpenAI, the Runs layer and the bot ask the scripted model twice per cycle (plan, then "
        "report), streamed, with the same tool schemas",
        "x floor: against the floor without a model",
        "bot: to pause = mention sent -> card posted; resume to end = approve sent -> Done shown",
    ]
    return [acks, cards, cycles, updates, layers]


# --- the report: the rows at scale (issue 11) ------------------------------------------------------------------

MB = 1024 * 1024


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def _probe_cells(probes: Sequence[SlashProbe]) -> list[Any]:
    acks = [p.ack_ms for p in probes]
    answers = [p.answer_ms for p in probes if p.answer_ms is not None]
    return [
        len(probes),
        ms(acks, 50),
        max(acks) if acks else None,
        sum(1 for p in probes if p.late),
        ms(answers, 50) if answers else None,
        len(probes) - len(answers),
    ]


def scale_tables(m: Measurements, plan: Plan) -> list[Table]:
    traffic = Table(
        "6. Redis traffic per approval cycle (counted by a proxy in front of Redis)",
        ["layer", "cycles", "round trips", "commands", "KB in+out", "x bare", "CPU ms", "most frequent commands"],
    )
    traffic.digits = {"KB in+out": 1, "x bare": 1, "round trips": 0, "commands": 0, "CPU ms": 1}
    bare_rt = _median([s.traffic.round_trips for s in m.floor_metered if s.traffic])
    for name, metered, timed in (
        ("bare LangGraph + AsyncRedisSaver", m.floor_metered, m.floor),
        (MODEL_FLOOR, m.model_floor_metered, m.model_floor),
        ("graphs.runs.Runs (scripted model)", m.runs_metered, m.runs_layer),
    ):
        samples = [s.traffic for s in metered if s.traffic]
        round_trips = _median([t.round_trips for t in samples])
        traffic.add(
            name,
            len(samples),
            round_trips,
            _median([t.commands for t in samples]),
            _median([t.bytes / 1024 for t in samples]),
            _ratio(round_trips, bare_rt),
            _median([s.cpu_ms for s in timed]),
            top_commands(samples[-1], 1) if samples else "-",
        )
    bt = m.bot_traffic
    traffic.add(
        "the bot over the local Slack",
        bt.cycles,
        bt.per_cycle(bt.total.round_trips),
        bt.per_cycle(bt.total.commands),
        bt.per_cycle(bt.total.bytes) / 1024,
        _ratio(bt.per_cycle(bt.total.round_trips), bare_rt),
        m.free_runs[0].bot_cpu_ms_per_cycle,
        top_commands(bt.total, bt.cycles),
    )
    traffic.notes = [
        "round trip = a request and its answer on one connection (a pipeline or MULTI/EXEC sent at once is one); "
        "commands = every command sent, inside pipelines too; KB = bytes both ways",
        "the floors and Runs: the median cycle of a few run through the proxy after a warm-up (their timed cycles, "
        "table 5, go straight to Redis); the bot: everything its Redis connections did over "
        f"{bt.cycles} sequential cycles ({bt.seconds:.1f}s, its sweeper and chat.update budget included), per cycle",
        "CPU ms = CPU per cycle of the process doing it: this one for the floors and Runs (their timed cycles), "
        "the bot process for the bot (table 3's sequential run); the model server's and Redis's CPU are not in it",
        "x bare: against the floor without a model",
        "target (issue 11): the Runs layer's round trips <= 2x bare, and its CPU <= 2x the floor's",
    ]

    t = m.thread
    history = Table(
        "7. /chatops history in a long thread (one thread; every turn a mention -> card -> approve -> Done)",
        ["turns", "probes", "ack p50", "ack max", "failed", "answer p50", "no answer", "bot ms/turn"],
    )
    bytes_table = Table(
        "7b. Redis bytes of that thread",
        ["turns", "keys", "MEMORY USAGE MB", "KB/turn", "used_memory +MB", "checkpoint", "writes", "registry", "bot"],
    )
    bytes_table.digits = {"MEMORY USAGE MB": 2, "used_memory +MB": 2}
    previous: tuple[int, int] = (0, 0)
    for level in t.levels:
        history.add(level.turns, *_probe_cells(level.probes), _median(level.turn_ms))
        fp = level.footprint
        kinds = fp.by_kind
        bytes_table.add(
            level.turns,
            fp.keys,
            _mb(fp.key_bytes),
            (fp.key_bytes - previous[1]) / 1024 / (level.turns - previous[0]),
            _mb(level.used_memory_delta),
            _kb(kinds.get("checkpoint")),
            _kb(kinds.get("checkpoint_write")),
            _kb(kinds.get("write_keys_zset")),
            _kb(kinds.get("the bot's own keys")),
        )
        previous = (level.turns, fp.key_bytes)
    history.notes = [
        "by an admin (CHATOPS_ADMINS); the probes run one after another once the bot is quiet, and stop after "
        "one that failed (its work would still be going on)",
        "ack = the HTTP answer as the local Slack times it; failed = no HTTP 200 within 3 s (Bolt answers 404 "
        "when a listener has not acked in 3 s; Slack shows the person an error); an ack much later than 3 s means "
        "the bot's event loop was blocked that long (Bolt's own 3 s timer could not fire)",
        "answer = command sent -> the history list shown to the caller (in the ack, or sent after it through the "
        "response_url or chat.postEphemeral); no answer = never shown within 30 s",
        "bot ms/turn = the bot's part of the last turns (mention -> card + approve -> Done)",
        "target (issue 11): ack <= 1 s at 100 turns",
    ]
    if t.error:
        history.notes.append(f"the thread {t.error}")
    bytes_table.notes = [
        "MEMORY USAGE = the sum of MEMORY USAGE <key> over every key that names the thread (the saver's "
        "checkpoint:<thread>:..., checkpoint_write:..., write_keys_zset:..., checkpoint_latest:..., and the bot's "
        "own run, Slack and audit keys); KB/turn = its growth per turn since the previous row",
        "used_memory = INFO used_memory of a Redis holding this thread alone, minus before the first turn "
        "(search indexes and allocator overhead included)",
        "columns checkpoint .. bot: KB of MEMORY USAGE by key kind (checkpoints, their writes, the write-key "
        "registry, the bot's own keys)",
        "target (issue 11): linear growth (KB/turn flat), <= 1 MB at 30 turns",
    ]

    c = m.cards
    pending = Table(
        f"8. /chatops pending with cards waiting, {c.latency_ms:.0f} ms added to every Slack call",
        ["cards", "probes", "ack p50", "ack max", "failed", "answer p50", "no answer", "bot RSS MB"],
    )
    for cards_level in c.levels:
        rss_mb = _mb(cards_level.rss_kb * 1024) if cards_level.rss_kb else None
        pending.add(cards_level.cards, *_probe_cells(cards_level.probes), rss_mb)
    pending.notes = [
        "cards = approval cards waiting in one channel (asked by 50 people), probed by an approver in that channel",
        f"the {c.latency_ms:.0f} ms is added by the local Slack to every Web API call and response_url post while "
        "the command is probed (not while the cards are made)",
        "ack, failed, answer: as in table 7",
        "target (issue 11): ack <= 1 s with 1,000 cards",
    ]
    if c.error:
        pending.notes.append(f"stopped early: {c.error}")
    rss = Table("8b. Bot RSS with runs paused for approval", ["measure", "value", "unit"])
    rss.digits = {"value": 1}
    rss.add("paused runs (cards waiting)", c.paused, "runs")
    rss.add("bot RSS before the first card (after a warm-up)", _mb((c.rss_before_kb or 0) * 1024), "MB")
    rss.add("bot RSS with them all waiting", _mb((c.rss_after_kb or 0) * 1024), "MB")
    rss.add("RSS growth", _mb((c.rss_growth_kb or 0) * 1024) if c.rss_growth_kb is not None else None, "MB")
    rss.add("RSS per paused run", (c.rss_growth_kb or 0) / c.paused if c.paused else None, "KB")
    rss.add("Redis keys per paused run", c.redis_keys_delta / c.paused if c.paused else None, "keys")
    rss.add("Redis used_memory per paused run", c.redis_bytes_delta / 1024 / c.paused if c.paused else None, "KB")
    rss.notes = [
        "VmRSS of the bot process (/proc/<pid>/status), read when it was quiet; Redis: DBSIZE and used_memory "
        "deltas of a Redis holding only this bot",
        "target (issue 11): RSS growth <= 10 MB at 1,000 paused runs",
    ]

    b = m.burst
    acks = summary(b.acks)
    burst_table = Table(f"9. A burst of {b.mentions:,} mentions by {b.users} people", ["measure", "value"])
    burst_table.digits = {"value": 1}
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(b.statuses.items(), key=lambda kv: -kv[1])) or "-"
    log = b.log
    burst_rows: list[tuple[str, Any]] = [
        ("delivered in (s), as fast as the bot acked, 10 at a time", b.sent_s),
        ("ack p50 / p99 / max (ms)", f"{_num(acks['p50'])} / {_num(acks['p99'])} / {_num(acks['max'])}"),
        ("acks over 3 s / not HTTP 200", f"{acks['over_3s']} / {b.non_200}"),
        ("threads with an approval card", b.carded),
        ("threads whose progress said Queued", b.said_queued),
        ("threads the bot refused (answered without a progress message)", b.refused),
        ("threads with no answer at all (lost events)", b.no_reply),
        ("progress shows Failed", b.failed_shown),
        ("progress still Queued / still Working at the end", f"{b.queued_now} / {b.working_now}"),
        ("run index at the end (statuses)", statuses),
        ("runs left marked running", b.statuses.get("running", 0)),
        ("errors / tracebacks in the bot's log", f"{log.errors} / {log.tracebacks}" if log else "-"),
        ("settled after (s)", f"{b.settled_s:.0f}" + ("" if b.settled else " (not settled: bound or stalled)")),
    ]
    for name, value in burst_rows:
        burst_table.add(name, value)
    burst_table.notes = [
        f"each person asks for {b.mentions // max(1, b.users)} tasks (the record runbook, needing approval), each "
        "in its own thread; default chat.update budget (45/min) and Slack's 50/min",
        "settled = every thread has a card, a refusal or an end, and no run is marked running; the wait ends "
        "after 20 s without change or at the bound",
        "Working can lag the truth here: the budget holds progress edits back (the run index has the truth)",
        "target (issue 11): every mention carded or clearly queued, none lost, no errors in the log",
    ]
    if log and log.top:
        burst_table.notes.append("most frequent errors: " + "; ".join(f"{n}x {line}" for line, n in log.top))

    f = m.flood
    flood_table = Table(
        f"10. Another person's card during one person's flood of {f.mentions} mentions", ["measure", "value"]
    )
    flood_table.digits = {"value": 1}
    decided = f"{f.decided_ms / 1000:.1f}" if f.decided_ms is not None else f"> {f.bound_s:.0f} (not in time)"
    if f.done_ms is not None:
        done = f"{f.done_ms / 1000:.1f}"
    elif f.decided_ms is not None:
        done = f"> {(f.decided_ms / 1000 + DONE_WAIT_S):.0f} (not in time)"
    else:
        done = "- (not waited for: the card was not decided in time)"
    flood_rows: list[tuple[str, Any]] = [
        ("flood delivered in (s)", f.sent_s),
        ("flood acks over 3 s / not HTTP 200", f"{summary(f.acks)['over_3s']} / {f.non_200}"),
        ("the other person's mention -> their card posted (s)", None if f.card_ms is None else f.card_ms / 1000),
        ("flood cards posted by then", f.flood_cards_at_click),
        ('approve click -> card says "Approval decided" (s)', decided),
        ("approve click -> their run shows Done (s)", done),
        ("flood mentions refused (e.g. a per-person limit)", f.flood_refused),
    ]
    for name, value in flood_rows:
        flood_table.add(name, value)
    flood_table.notes = [
        "the flood and the other request share one workspace: the default chat.update budget (45/min) and "
        "Slack's 50/min; the other person asks in another channel right after the flood was delivered",
        "no per-person limit in this bot (CHATOPS_MAX_RUNS_PER_USER=0): every flood run meets the budget",
        "target (issue 11): the decided card within 5 s",
    ]
    if f.error:
        flood_table.notes.append(f"stopped early: {f.error}")
    return [traffic, history, bytes_table, pending, rss, burst_table, flood_table]


def _kb(value: float | None) -> float | None:
    return None if value is None else value / 1024


def targets_table(m: Measurements) -> Table:
    """Every row of issue 11's table of targets, with this run's value."""
    table = Table("Issue 11 targets", ["row", "this run", "target"])
    bare = _median([s.traffic.round_trips for s in m.floor_metered if s.traffic])
    runs = _median([s.traffic.round_trips for s in m.runs_metered if s.traffic])
    table.add(
        "Redis round trips per approval cycle, project (Runs) / bare",
        f"{_num(runs)} / {_num(bare)} ({_fmt_ratio(_ratio(runs, bare))})",
        "<= 2x bare",
    )
    floor_cpu = _median([s.cpu_ms for s in m.floor])
    model_cpu = _median([s.cpu_ms for s in m.model_floor])
    runs_cpu = _median([s.cpu_ms for s in m.runs_layer])
    table.add(
        "Runs-layer cycle CPU / bare floor",
        f"{_fmt_ratio(_ratio(runs_cpu, floor_cpu))} ({_num(runs_cpu)} / {_num(floor_cpu)} ms); "
        f"against the floor asking the same model: {_fmt_ratio(_ratio(runs_cpu, model_cpu))} ({_num(model_cpu)} ms)",
        "<= 2x",
    )
    levels = {level.turns: level for level in m.thread.levels}
    biggest = max(levels) if levels else None
    at = 30 if 30 in levels else biggest
    if at is not None:
        fp = levels[at].footprint
        per_turn = [
            f"{(b.footprint.key_bytes - a.footprint.key_bytes) / 1024 / (b.turns - a.turns):,.0f}"
            for a, b in zip(m.thread.levels, m.thread.levels[1:], strict=False)
        ]
        table.add(
            f"Redis bytes per thread at {at} turns",
            f"{fp.key_bytes / MB:.2f} MB (KB/turn between levels: {', '.join(per_turn) or '-'})",
            "linear, <= 1 MB (at 30)",
        )
    if biggest is not None:
        table.add(f"/chatops history ack at {biggest} turns", _ack_cell(levels[biggest].probes), "<= 1 s (at 100)")
    if m.cards.levels:
        top = m.cards.levels[-1]
        table.add(
            f"/chatops pending ack, {top.cards:,} cards, {m.cards.latency_ms:.0f} ms Slack latency",
            _ack_cell(top.probes),
            "<= 1 s (1,000 cards)",
        )
    b = m.burst
    errors = f"{b.log.errors} errors, {b.log.tracebacks} tracebacks" if b.log else "-"
    table.add(
        f"burst of {b.mentions:,} mentions",
        f"{b.carded} carded, {b.said_queued} said queued, {b.refused} refused, {b.no_reply} lost, "
        f"{b.statuses.get('failed', 0)} failed, {b.statuses.get('running', 0)} left running; {errors}",
        "all carded or queued, 0 errors",
    )
    f = m.flood
    table.add(
        f"another user's decided card during a {f.mentions}-mention flood",
        f"{f.decided_ms / 1000:.1f} s" if f.decided_ms is not None else f"> {f.bound_s:.0f} s",
        "<= 5 s (200 mentions)",
    )
    seq_updates = m.free_updates[len(m.loads)]
    per_cycle = len(seq_updates.times) / len(m.free_runs[0].cycles) if m.free_runs[0].cycles else None
    per_min = " / ".join(f"{run.per_second * 60:.1f} ({run.label})" for run in m.budget_runs)
    table.add(
        "chat.update per cycle / budgeted cycles per min",
        f"{_fmt(per_cycle, 2)} / {per_min}",
        "<= 2 / >= 20",
    )
    c = m.cards
    table.add(
        f"bot RSS growth, {c.paused:,} paused runs",
        f"{c.rss_growth_kb / 1024:+.1f} MB" if c.rss_growth_kb is not None else "-",
        "<= 10 MB (1,000 runs)",
    )
    table.notes = [
        "chat.update per cycle: unconstrained, sequential (the demand); cycles/min: the budgeted runs "
        "(a --quick box is shorter than the 60 s window, so it shows the first burst only)",
    ]
    return table


def _ack_cell(probes: Sequence[SlashProbe]) -> str:
    if not probes:
        return "-"
    acks = [p.ack_ms for p in probes]
    failed = sum(1 for p in probes if p.late)
    answers = [p.answer_ms for p in probes if p.answer_ms is not None]
    answer = f", answer shown p50 {_num(ms(answers, 50))} ms" if answers else ", answer never shown"
    return f"p50 {_num(ms(acks, 50))} ms, max {_num(max(acks))} ms" + (f", {failed} failed" if failed else "") + answer


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(m: Measurements) -> Table:
    table = Table("Summary", ["measure", "value", "unit"])
    table.digits = {"value": 1}
    worst = max(m.loads, key=lambda load: load.in_flight)
    every_ack = [x for load in m.loads for samples in load.acks.values() for x in samples]
    worst_acks = [x for samples in worst.acks.values() for x in samples]
    table.add(
        f"ack p50 / p99 with {worst.in_flight} in flight",
        f"{_num(ms(worst_acks, 50))} / {_num(ms(worst_acks, 99))}",
        "ms",
    )
    table.add("ack max, all levels", max(every_ack) if every_ack else None, "ms")
    table.add(
        f"acks over Slack's {SLACK_ACK_DEADLINE_MS:.0f} ms",
        sum(1 for x in every_ack if x > SLACK_ACK_DEADLINE_MS),
        "acks",
    )
    table.add(
        f"click to card p50 / p99 with {worst.in_flight} in flight",
        f"{_num(ms(worst.click_to_card_ms, 50))} / {_num(ms(worst.click_to_card_ms, 99))}",
        "ms",
    )
    for run in m.free_runs:
        table.add(f"cycles/s unconstrained, {run.label}", round(run.per_second, 2), "cycles/s")
    for run in m.budget_runs:
        table.add(f"cycles/s budget {BUDGET_PER_MINUTE}/min, {run.label}", round(run.per_second, 2), "cycles/s")
        table.add(
            f"cycles/min budget {BUDGET_PER_MINUTE}/min, {run.label}", round(run.per_second * 60, 1), "cycles/min"
        )
    for run, calls in zip(m.free_runs, m.free_updates[len(m.loads) :], strict=True):
        per_cycle = len(calls.times) / len(run.cycles) if run.cycles else None
        table.add(f"chat.update per cycle, unconstrained, {run.label}", per_cycle, "calls/cycle")
    for run, calls in zip(m.budget_runs, m.budget_updates, strict=True):
        per_cycle = len(calls.times) / len(run.cycles) if run.cycles else None
        table.add(f"chat.update per cycle, budget {BUDGET_PER_MINUTE}/min, {run.label}", per_cycle, "calls/cycle")
    table.add(
        "chat.update peak in any 60 s, budgeted bots", max(m.budget_peak_rates), f"calls (budget {BUDGET_PER_MINUTE})"
    )
    floor_ms = _median([s.total_ms for s in m.floor])
    runs_ms = _median([s.total_ms for s in m.runs_layer])
    bot_ms = _median([c.bot_ms for c in m.free_runs[0].cycles])
    table.add("cycle: floor / Runs / bot", f"{_num(floor_ms)} / {_num(runs_ms)} / {_num(bot_ms)}", "ms (p50)")
    table.add("bot cycle / floor", _ratio(bot_ms, floor_ms), "x")
    table.add(
        "bot shutdown (SIGTERM to exit): " + " / ".join(m.shutdown_s),
        " / ".join(f"{seconds:.1f}" for seconds in m.shutdown_s.values()),
        "s",
    )
    return table


def _median(samples: Sequence[float]) -> float | None:
    return percentile(samples, 50)


def _ratio(value: float | None, floor: float | None) -> float | None:
    return value / floor if value is not None and floor else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_report(info: dict[str, Any], all_tables: list[Table], runtime_s: float) -> None:
    print(
        f"chatops-bot benchmark ({info['mode']}) · {info['date']} · {info['cores']} cores · Python "
        f"{info['python']} · {info['platform']} · load avg at start {info['load_avg_at_start']}, "
        f"at end {info['load_avg_at_end']}"
    )
    for table in all_tables:
        print()
        print(table.render())
    print(f"\nruntime {runtime_s:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~30 s run with fewer levels and cycles")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the tables as JSON to PATH")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    info = machine_info(plan)
    say = Progress()
    workdir = Path(tempfile.mkdtemp(prefix="chatops-bench-"))
    ok = False
    try:
        measured = asyncio.run(measure(plan, workdir, say))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        left = child_pids()
        if left:
            print(f"warning: child processes still running: {left}", file=sys.stderr)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    runtime_s = time.monotonic() - say.started
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    all_tables = [
        *tables(measured, plan),
        *scale_tables(measured, plan),
        summary_table(measured),
        targets_table(measured),
    ]
    print_report(info, all_tables, runtime_s)
    if args.json:
        payload = {
            "machine": info,
            "plan": asdict(plan),
            "runtime_s": round(runtime_s, 1),
            "tables": [t.to_json() for t in all_tables],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
