"""A terminal demo of the core: give a task, watch the agent work, approve its tool calls at the prompt.

    python -m graphs "check the API, run the disk-usage runbook and post a summary to #ops"

With no model configured the offline planner plans (and says so). With REDIS_URL unset an embedded
Redis keeps its data in CHATOPS_DATA_DIR (default .chatops-data), so a paused run survives a restart:
run ``python -m graphs --pending`` to see and decide what is waiting.

Ctrl-C at a prompt ends the demo at once with exit code 130, after closing everything (the embedded Redis
too); the review it was at stays pending. While the agent works, Ctrl-C stops the run where it is. That is why
answers are read by a daemon thread while the event loop waits for them: ``input()`` on the loop's own thread
blocked the loop, and asyncio.run's SIGINT handler only marks the main task for cancellation and returns, so
``input()`` went on reading and the first Ctrl-C did nothing until the next Enter. Now the main thread waits in
the loop, the cancellation arrives at once, and the thread left reading dies with the process. (The embedded
Redis runs in a session of its own, so the terminal's Ctrl-C does not stop it under the demo: see
graphs.embedded_redis.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

from .display import shorten, show_value, visible
from .errors import ChatOpsError, InvalidDecision
from .model_errors import check_model
from .planner import OFFLINE_LABEL
from .runs import Runs
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


class _Terminal:
    """The person at the terminal: asks them questions, and knows what was going on when they pressed Ctrl-C."""

    def __init__(self) -> None:
        self.asking = False  # a question is on the screen, waiting for an answer
        self.run: str | None = None  # the run being driven or decided, if any

    async def ask(self, prompt: str) -> str:
        """One line typed at the terminal, read off the event loop (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # Ctrl-C is the main thread's to handle
            try:
                line: str | BaseException = _read_line()
            except Exception as exc:  # noqa: BLE001 - EOFError or any other: the waiting question raises it
                line = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: the demo stopped listening
                loop.call_soon_threadsafe(_settle, answer, line)

        print(prompt, end="", flush=True)
        threading.Thread(target=read, name="terminal-input", daemon=True).start()
        self.asking = True  # and it stays so if Ctrl-C cancels the wait
        try:
            line = await answer
        except EOFError:
            left = "the review stays pending" if self.run else "nothing to do"
            raise SystemExit(f"\nno answer on standard input: {left}") from None
        self.asking = False
        return line

    async def decide(self, review: PendingReview) -> list[Decision]:
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
                answer = (await self.ask("     [a]pprove, [e]dit, [r]eject? ")).strip().lower()[:1]
                if answer == "a":
                    decisions.append(approve())
                elif answer == "r":
                    decisions.append(reject((await self.ask("     reason (optional): ")).strip()))
                elif answer == "e":
                    args: dict[str, Any] = {}
                    for key, value in action["args"].items():
                        raw = (await self.ask(f"     {key} [{json.dumps(value)}]: ")).strip()
                        args[key] = value if not raw else _parse(raw)
                    decisions.append(edit(action["name"], args))
                else:
                    continue
                break
        return decisions

    async def review_loop(self, runs: Runs, review: PendingReview | None) -> None:
        while review is not None:
            self.run = review.thread_id
            try:
                result = await runs.resume(
                    review.thread_id,
                    review.interrupt_id,
                    await self.decide(review),
                    decided_by="terminal",
                    on_event=_on_event,
                )
            except InvalidDecision as exc:
                print(f"  refused: {exc}")
                continue
            review = result.pending
        self.run = None

    def interrupted(self) -> str:
        """What to tell a person who pressed Ctrl-C, once everything is closed."""
        run = visible(self.run) if self.run else None
        if self.asking:
            waits = f" (run {run} waits for review: python -m graphs --pending)" if run else ""
            return f"interrupted — nothing else ran{waits}"
        if run:
            return f"interrupted — run {run} stopped mid-way; what it did is shown above"
        return "interrupted"


def _read_line() -> str:
    """A line from standard input, as ``input()`` reads one, but from the file descriptor itself.

    ``input()`` reads a pipe through ``sys.stdin``'s buffer, under its lock; a thread left holding that lock,
    blocked in a read, makes the interpreter abort as it shuts down. A terminal hands over a whole line at
    a time (its line discipline edits it), so reading byte by byte costs nothing at human speed."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(sys.stdin.fileno(), 1)
        if not byte:  # end of input: what came before it is the last line
            if not line:
                raise EOFError
            break
        line += byte
    return line.decode(sys.stdin.encoding, sys.stdin.errors or "strict").removesuffix("\n")


def _settle(answer: asyncio.Future[str], line: str | BaseException) -> None:
    if answer.done():  # cancelled: Ctrl-C came first
        return
    if isinstance(line, BaseException):
        answer.set_exception(line)
    else:
        answer.set_result(line)


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute ago"
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    return f"{hours} h ago" if hours < 48 else f"{hours // 24} days ago"


def _one_line(text: str, limit: int) -> str:
    """``text`` on one line, clipped before it is made visible, so no escape is cut in half."""
    clipped, left_out = shorten(text, limit)
    line = visible(clipped.rstrip() if left_out else clipped).replace("\n", "⟨LF⟩")
    return line + "…" if left_out else line


def _listing(waiting: list[PendingReview], now: float) -> str:
    """What waits, one line a run: how long it has waited, the task, the calls it waits on."""
    lines = [f"{len(waiting)} waiting for review:"]
    for review in waiting:
        age = _age(now - review.created_at) if review.created_at else "waiting since an unknown time"
        calls = ", ".join(f"{a['name']}({summarize_args(a['args'], 60)})" for a in review.request["action_requests"])
        lines.append(f"  run {visible(review.thread_id)}, {age}: {_one_line(review.task, 60)} — waiting: {calls}")
    return "\n".join(lines)


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
    terminal = _Terminal()
    try:
        async with open_runtime(settings, post_message=_post) as runtime:
            if not settings.model_configured:
                print(f"{OFFLINE_LABEL} set OPENAI_API_KEY / OPENAI_BASE_URL / CHATOPS_MODEL to use a model.\n")
            else:
                checked = await check_model(
                    settings.openai_base_url, settings.openai_api_key, settings.model, settings.model_configured
                )
                print(f"{checked.line}\n", flush=True)
            if args.pending:
                await _decide_pending(runtime.runs, terminal)
            else:
                await _run(runtime.runs, terminal, " ".join(args.task) or await terminal.ask("What should I do? "))
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task, its only canceller. By now the runtime has closed and the
        # embedded Redis has stopped; what is left is to say so, and to end as an interrupted program does.
        print(f"\n{terminal.interrupted()}", file=sys.stderr, flush=True)
        return 130
    return 0


async def _run(runs: Runs, terminal: _Terminal, task: str) -> None:
    terminal.run = thread_id = uuid.uuid4().hex[:8]
    print(f"run {thread_id}\n")
    result = await runs.start(thread_id, task, requester="terminal", on_event=_on_event)
    await terminal.review_loop(runs, result.pending)


async def _decide_pending(runs: Runs, terminal: _Terminal) -> None:
    waiting = await runs.pending()
    if not waiting:
        print("nothing is waiting for review")
        return
    print(_listing(waiting, time.time()))
    for listed in waiting:
        # The listing may lag; the thread's checkpoint says whether it still waits, and for what.
        review = await runs.pending_review(listed.thread_id)
        print(f"\nrun {visible(listed.thread_id)}: {visible(listed.task)}")
        if review is None:
            print("  no longer waiting: decided elsewhere")
            continue
        await terminal.review_loop(runs, review)


async def _post(channel: str, text: str) -> str:
    print(f"\n  [message to {visible(channel)}] {visible(text)}")
    return f"posted to {channel} (terminal demo: printed, not sent)"


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:  # a second Ctrl-C, while the first was being handled
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except ChatOpsError as exc:
        sys.exit(f"error: {exc}")
