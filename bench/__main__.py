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

from .floor import CycleSample, bare_langgraph_cycles, runs_layer_cycles
from .harness import (
    BotConfig,
    ModelServer,
    SlackBot,
    child_pids,
    model_rules,
    write_runbooks,
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


def budgeted(concurrency: int) -> BotConfig:
    return BotConfig(
        f"budgeted-{concurrency}", update_budget=BUDGET_PER_MINUTE, slack_update_limit=SLACK_TIER3_PER_MINUTE
    )


def run_label(concurrency: int) -> str:
    return "sequential" if concurrency == 1 else f"{concurrency} at once"


UNCONSTRAINED = BotConfig("unconstrained", update_budget=100_000, slack_update_limit=None)


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
)


@dataclass
class Measurements:
    floor: list[CycleSample]
    runs_layer: list[CycleSample]
    loads: list[AckLoad]
    free_runs: list[CycleRun]
    free_updates: list[UpdateCalls]
    budget_runs: list[CycleRun]
    budget_updates: list[UpdateCalls]
    budget_peak_rates: list[int]
    shutdown_s: dict[str, float]


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

        say(f"floor: {plan.floor_cycles} cycles on bare LangGraph + AsyncRedisSaver, then on the Runs layer")
        floor = await bare_langgraph_cycles(redis.url, runbooks / "record.sh", plan.floor_cycles)
        runs_layer = await runs_layer_cycles(redis.url, model.base_url, runbooks, plan.floor_cycles)

        configs = [UNCONSTRAINED, *(budgeted(c) for c in plan.budget_concurrency)]
        say(f"starting {len(configs)} bots, each with its own local Slack: " + ", ".join(c.name for c in configs))
        bots = [
            SlackBot(config, redis_url=redis.url, model_url=model.base_url, runbooks=runbooks, workdir=workdir)
            for config in configs
        ]
        for bot in bots:
            stack.callback(bot.stop)
        await asyncio.gather(*(asyncio.to_thread(bot.start) for bot in bots))
        free, budget_bots = bots[0], bots[1:]

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
        for bot, seconds in zip(budget_bots, await asyncio.gather(*stopping), strict=True):
            shutdown[bot.config.name] = seconds
        if model.unmatched():
            say(f"warning: the scripted model refused {model.unmatched()} request(s); see {model.log_path}")
    return Measurements(
        floor, runs_layer, loads, free_runs, free_updates, budget_runs, budget_updates, budget_peaks, shutdown
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
        "in-flight runs not yet Done when the last probe was answered",
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
        'all with durability="sync" on the same Redis; the floor\'s plan step proposes the call without a model, '
        "the Runs layer and the bot ask the scripted model twice per cycle (plan, then report)",
        "bot: to pause = mention sent -> card posted; resume to end = approve sent -> Done shown",
    ]
    return [acks, cards, cycles, updates, layers]


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
    all_tables = [*tables(measured, plan), summary_table(measured)]
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
