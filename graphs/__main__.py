"""A terminal demo of the core: give a task, watch the agent work, approve its tool calls at the prompt.

    python -m graphs "check the API, run the disk-usage runbook and post a summary to #ops"

With no model configured the offline planner plans (and says so). With REDIS_URL unset an embedded
Redis keeps its data in CHATOPS_DATA_DIR (default .chatops-data), so a paused run survives a restart:
run ``python -m graphs --pending`` to see and decide what is waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

from .display import show_value, visible
from .errors import ChatOpsError, InvalidDecision
from .planner import OFFLINE_LABEL
from .runtime import open_runtime
from .settings import CoreSettings
from .tools import summarize_args
from .types import (
    Decision,
    Failed,
    Finished,
    PendingReview,
    RunEvent,
    Token,
    ToolFinished,
    ToolStarted,
    approve,
    edit,
    reject,
)


def _print_event(event: RunEvent) -> None:
    if isinstance(event, Token):
        print(event.text, end="", flush=True)
    elif isinstance(event, ToolStarted):
        print(f"\n  -> {event.name}({summarize_args(event.args)})", flush=True)  # summary: values made visible
    elif isinstance(event, ToolFinished):
        mark = "ok" if event.ok else "FAILED"
        first = event.output.strip().splitlines()[0] if event.output.strip() else ""
        print(f"  <- {event.name} {mark} in {event.duration_s:.2f}s: {visible(first)}", flush=True)
    elif isinstance(event, Finished):
        print("\n\nDone.")
    elif isinstance(event, Failed):
        print(f"\n\nThe run failed: {event.error}")


async def _on_event(event: RunEvent) -> None:
    _print_event(event)


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        raise SystemExit("\nno answer on standard input: the review stays pending") from None


def _decide(review: PendingReview) -> list[Decision]:
    print("\n\nApproval needed for:")
    decisions: list[Decision] = []
    for n, action in enumerate(review.request["action_requests"], 1):
        # Every value whole, hidden characters shown by their code: what is approved is exactly what runs.
        print(f"  {n}. {action['name']}")
        for key, value in action["args"].items():
            shown = show_value(value).replace("\n", "\n" + " " * 8)
            print(f"     {visible(str(key))}: {shown}")
        for fact in action.get("facts") or []:
            print(f"     -> {visible(fact)}")
        while True:
            answer = _ask("     [a]pprove, [e]dit, [r]eject? ").strip().lower()[:1]
            if answer == "a":
                decisions.append(approve())
            elif answer == "r":
                decisions.append(reject(_ask("     reason (optional): ").strip()))
            elif answer == "e":
                args: dict[str, Any] = {}
                for key, value in action["args"].items():
                    raw = _ask(f"     {key} [{json.dumps(value)}]: ").strip()
                    args[key] = value if not raw else _parse(raw)
                decisions.append(edit(action["name"], args))
            else:
                continue
            break
    return decisions


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphs", description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="*", help="what you want done")
    parser.add_argument("--pending", action="store_true", help="list and decide reviews left pending")
    args = parser.parse_args(argv)
    settings = CoreSettings.from_env()
    async with open_runtime(settings, post_message=_post) as runtime:
        runs = runtime.runs
        if not settings.model_configured:
            print(f"{OFFLINE_LABEL} set OPENAI_API_KEY / OPENAI_BASE_URL / CHATOPS_MODEL to use a model.\n")
        if args.pending:
            waiting = await runs.pending()
            if not waiting:
                print("nothing is waiting for review")
            for review in waiting:
                print(f"\nrun {review.thread_id}: {review.task}")
                await _review_loop(runs, review)
            return 0
        task = " ".join(args.task) or _ask("What should I do? ")
        thread_id = uuid.uuid4().hex[:8]
        print(f"run {thread_id}\n")
        result = await runs.start(thread_id, task, requester="terminal", on_event=_on_event)
        if result.pending:
            await _review_loop(runs, result.pending)
    return 0


async def _review_loop(runs: Any, review: PendingReview | None) -> None:
    while review is not None:
        try:
            result = await runs.resume(
                review.thread_id, review.interrupt_id, _decide(review), decided_by="terminal", on_event=_on_event
            )
        except InvalidDecision as exc:
            print(f"  refused: {exc}")
            continue
        review = result.pending


async def _post(channel: str, text: str) -> str:
    print(f"\n  [message to {visible(channel)}] {visible(text)}")
    return f"posted to {channel} (terminal demo: printed, not sent)"


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
    except ChatOpsError as exc:
        sys.exit(f"error: {exc}")
