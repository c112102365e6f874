"""What the benchmark runs against and how it drives it: Redis, the scripted model in its own process, the
runbooks folder, the local Slack with the real bot, and reading Slack threads like a person.

Everything listens on 127.0.0.1 and free ports; every process started here is stopped by the context managers
that start it, also on exceptions and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphs.embedded_redis import free_port
from sandbox.processes import ROOT, BotProcess
from sandbox.slack import Delivery, LocalSlack
from sandbox.slack.reading import all_text, header_of

SECRET = "bench-signing-secret"
REQUESTER, APPROVER = "U0ALICE", "U0BOB"
MODEL_START_TIMEOUT_S = 15.0
MODEL_STOP_TIMEOUT_S = 5.0

# Tasks the scripted model recognises (matched on the last user message).
STREAM_TASK = "stream slowly: summarise the incident timeline"
PROBE_TASK = "probe: say hello"
RECORD_TASK = "run the record runbook"
DONE_LINE = ":white_check_mark: Done"
# The first line of a progress message, as a person reads it (bot.progress.STATUS_LINE), and what it means.
STATUS_MARKS = (
    (":hourglass: Queued", "queued"),
    (":hourglass_flowing_sand: Working", "working"),
    (":raised_hand: Waiting for approval", "waiting"),
    (DONE_LINE, "done"),
    (":x: Failed", "failed"),
    (":information_source: Nothing to do", "nothing"),
    (":no_entry: Nothing ran", "rejected"),
    (":octagonal_sign: Stopped", "stopped"),
    (":no_entry_sign: Cancelled", "cancelled"),
    (":alarm_clock: Expired", "expired"),
)
FINAL = frozenset({"done", "failed", "nothing", "rejected", "stopped", "cancelled", "expired"})


def status_of(text: str) -> str | None:
    """A progress message's state from its first line, None if the message is no progress message."""
    first = text.split("\n", 1)[0].strip()
    for mark, status in STATUS_MARKS:
        if first.startswith(mark):
            return status
    return None


# --- the scripted model -------------------------------------------------------------------------------------


def model_rules(stream_words: int, chunk_delay_s: float) -> list[dict[str, Any]]:
    """The script: slow streams keep runs in flight, probes finish at once, the record task asks for approval."""
    long_text = " ".join(f"step{n}" for n in range(stream_words)) + "."
    return [
        {"when": {"last_user_contains": "stream slowly"}, "reply": {"text": long_text, "chunk_delay": chunk_delay_s}},
        {"when": {"last_user_contains": "probe"}, "reply": {"text": "Nothing to do for a probe."}},
        {
            "when": {"last_user_contains": "record runbook", "has_tool_results": False},
            "reply": {
                "text": "Running the record runbook.",
                "tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}],
            },
        },
        {"when": {"has_tool_results": True}, "reply": {"text": "Recorded: the runbook ran."}},
    ]


class ModelServer:
    """``python -m sandbox.openai_server`` in its own process, so its streaming threads do not share the GIL
    with the local Slack and the deliveries this process times."""

    def __init__(self, rules: list[dict[str, Any]], workdir: Path) -> None:
        self.port = free_port()
        self.script = workdir / "model-script.json"
        self.script.write_text(json.dumps({"rules": rules}))
        self.log_path = workdir / "model.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServer:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.openai_server", "--script", str(self.script), "--port", str(self.port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + MODEL_START_TIMEOUT_S
        request = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": "Bearer bench"})
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the scripted model exited at start-up: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the scripted model did not answer within {MODEL_START_TIMEOUT_S}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(MODEL_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(MODEL_STOP_TIMEOUT_S)

    def unmatched(self) -> int:
        """How many requests the server refused with HTTP 400 (a prompt no rule matched)."""
        return self.log_path.read_text(errors="replace").count('" 400 ') if self.log_path.exists() else 0


def write_runbooks(folder: Path) -> Path:
    """A runbooks folder with ``record.sh``, which echoes and exits 0."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "record.sh"
    script.write_text('#!/usr/bin/env bash\n# record (benchmark runbook)\necho "recorded $$"\n')
    script.chmod(0o755)
    return folder


# --- the bot against a local Slack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BotConfig:
    """One bot deployment: its chat.update budget and the local Slack's chat.update limit (None: unlimited);
    how long the local Slack waits for the bot's HTTP answers (Slack: 3 s; longer shows by how much an answer is
    late instead of only that it is), and more environment for the bot."""

    name: str
    update_budget: int
    slack_update_limit: int | None
    delivery_timeout_s: float = 3.0
    env: tuple[tuple[str, str], ...] = ()


class SlackBot:
    """A fresh local Slack and the real bot (``python -m bot``) pointed at it. `stop()` stops both and may be
    called any number of times, from any thread."""

    def __init__(self, config: BotConfig, *, redis_url: str, model_url: str, runbooks: Path, workdir: Path) -> None:
        self.config = config
        self.slack = LocalSlack(SECRET, delivery_timeout=config.delivery_timeout_s)
        self.slack.set_rate_limit("chat.update", config.slack_update_limit)
        self.redis_url = redis_url
        self.prefix = f"bench{uuid.uuid4().hex[:8]}:"  # own keys and own chat.update budget
        self._env = {
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_SIGNING_SECRET": SECRET,
            "REDIS_URL": redis_url,
            "OPENAI_BASE_URL": model_url,
            "OPENAI_API_KEY": "bench-key",
            "CHATOPS_MODEL": "scripted",
            "CHATOPS_RUNBOOKS_DIR": str(runbooks),
            "CHATOPS_KEY_PREFIX": self.prefix,
            "CHATOPS_UPDATE_BUDGET": str(config.update_budget),
            "LOG_LEVEL": "WARNING",
            **dict(config.env),
        }
        self.log_path = workdir / f"bot-{config.name}.log"
        self.bot: BotProcess | None = None
        self._lock = threading.Lock()

    def start(self) -> SlackBot:
        self.slack.start()
        self.bot = BotProcess({**self._env, "SLACK_API_URL": self.slack.api_url}, self.log_path)
        self.bot.start()
        self.slack.bot_url = self.bot.url
        return self

    @property
    def pid(self) -> int | None:
        """The bot's process id, found among our children by the port it was given."""
        if self.bot is None:
            return None
        needle = f"\0PORT={self.bot.port}\0".encode()
        for pid in child_pids():
            try:
                if needle in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> float:
        """Stop the bot (SIGTERM; SIGKILL after 15 s), then the local Slack; the seconds the bot took to exit."""
        with self._lock:
            bot, self.bot = self.bot, None
            started = time.monotonic()
            try:
                if bot is not None:
                    bot.stop()
                return time.monotonic() - started
            finally:
                self.slack.stop()


def rss_kb(pid: int | None) -> int | None:
    """The process's resident set size (VmRSS in /proc/<pid>/status), in KiB; None once it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids() -> list[int]:
    """Live child processes of this process (read from /proc): what the benchmark would leave behind."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


# --- reading Slack like a person -----------------------------------------------------------------------------


class SlackThread:
    """One Slack thread the benchmark started: the bot's progress message and its approval card."""

    def __init__(self, slack: LocalSlack, channel: str, ts: str, sent_at: float, deliveries: list[Delivery]) -> None:
        self.slack, self.channel, self.ts = slack, channel, ts
        self.sent_at = sent_at  # wall clock, as the local Slack stamps message ts
        self.deliveries = deliveries

    def bot_replies(self) -> list[dict[str, Any]]:
        return [m for m in self.slack.messages(self.channel, self.ts) if m.get("bot_id") or m.get("user") == "U0BOT"]

    def progress(self) -> dict[str, Any] | None:
        replies = self.bot_replies()
        return replies[0] if replies else None

    def card(self) -> dict[str, Any] | None:
        cards = [m for m in self.bot_replies() if header_of(m) == "Approval needed"]
        return cards[-1] if cards else None

    def is_done(self) -> bool:
        return DONE_LINE in all_text(self.progress())

    def is_finished(self) -> bool:
        """The run ended, however (a task that proposes no call ends "Nothing to do", not "Done")."""
        return status_of(all_text(self.progress())) in FINAL

    async def wait_card(self, timeout: float, interval: float) -> dict[str, Any]:
        await self.slack.wait_for(self.card, timeout=timeout, interval=interval, description=f"a card in {self.ts}")
        card = self.card()
        assert card is not None
        return card

    async def wait_done(self, timeout: float, interval: float) -> None:
        await self.slack.wait_for(self.is_done, timeout=timeout, interval=interval, description=f"Done in {self.ts}")

    def done_at(self) -> float | None:
        """When (wall clock) the progress message first said Done, from the local Slack's edit history."""
        progress = self.progress()
        if progress is None:
            return None
        for version in self.slack.edit_history(self.channel, progress["ts"]):
            if DONE_LINE in all_text(version):
                return float(version["at"])
        return None


def decided_at(slack: LocalSlack, channel: str, card_ts: str) -> float | None:
    """When (wall clock) a card was first rewritten to "Approval decided"."""
    for version in slack.edit_history(channel, card_ts):
        if header_of(version) == "Approval decided":
            return float(version["at"])
    return None


async def mention(
    slack: LocalSlack, channel: str, task: str, user: str = REQUESTER, thread_ts: str | None = None
) -> SlackThread:
    """A person mentions the bot with a task; the thread hangs off their message (or, with `thread_ts`, the
    mention is a reply in that thread and the returned thread is that one)."""
    sent_at = time.time()
    deliveries = await slack.post_user_message(user, channel, f"<@U0BOT> {task}", thread_ts=thread_ts)
    ts = thread_ts or str(deliveries[0].request["event"]["ts"])
    return SlackThread(slack, channel, ts, sent_at, deliveries)


def checkbox_of(card: dict[str, Any]) -> tuple[str, str, str]:
    """(block_id, action_id, first option value) of the card's first checkbox group."""
    for block in card["blocks"]:
        for element in block.get("elements") or []:
            if element.get("type") == "checkboxes":
                return block["block_id"], element["action_id"], element["options"][0]["value"]
    raise ValueError("the card has no checkboxes")
