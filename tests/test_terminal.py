"""The terminal demo on a real terminal: Ctrl-C at a prompt, and deciding what was left waiting.

Pipes cannot show these. Ctrl-C is a key the terminal's line discipline turns into SIGINT for the whole
foreground process group, and ``input()`` reads differently from a terminal than from a pipe. So each run here
gets a pseudo-terminal of its own as its controlling terminal, and keys are typed into it. REDIS_URL is unset:
the demo starts its embedded Redis itself, as ``make demo`` does, the server a stray Ctrl-C used to kill.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphs.__main__ import _listing
from graphs.types import PendingReview

from .conftest import Runbooks

ROOT = Path(__file__).resolve().parents[1]
TASK = "run the disk-usage runbook and post a summary to #ops"
PROMPT = "[a]pprove, [e]dit, [r]eject? "
CTRL_C = "\x03"
WAIT_S = 60.0  # the longest any one step may take: start-up imports the agent and starts an embedded Redis
STOP_S = 15.0  # Ctrl-C to exit, Redis stopped included (well under a second here); before the fix it was never


def _take_terminal() -> None:
    """In the child, after start_new_session's setsid(): make the pty (its stdin) the controlling terminal.
    That also makes the child's process group the terminal's foreground group, the one Ctrl-C signals.
    SIGINT back to its default, as a person's shell gives it: a test run started in the background of a
    non-interactive shell (a CI script with ``&``) inherits it ignored, and Python then never raises on Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """One ``python -m graphs`` on a pseudo-terminal. ``screen``: everything it showed, as a person saw it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._fd, slave = os.openpty()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "graphs", *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=ROOT,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(self._fd)
            raise
        finally:
            os.close(slave)
        self._output = b""
        self._seen = 0  # how much of the screen expect() has matched already
        self._open = True

    @property
    def screen(self) -> str:
        # The terminal turns each "\n" into "\r\n"; a person sees plain lines.
        return self._output.decode(errors="replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool:
        """Add what the program shows within ``timeout``; False once nothing holds its side of the terminal."""
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0)) if self._open else ([], [], [])
        if ready:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: every process that had the terminal open has gone
                chunk = b""
            self._output += chunk
            self._open = bool(chunk)
        return self._open

    def expect(self, text: str, timeout: float = WAIT_S) -> str:
        """Wait until ``text`` shows after what the last expect() matched; the screen up to it."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self._seen)) < 0:
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} did not show within {timeout:.0f}s; the screen:\n{self.screen}")
        self._seen = found + len(text)
        return self.screen[: self._seen]

    def type(self, keys: str) -> None:
        os.write(self._fd, keys.encode())

    def exit_code(self, timeout: float = WAIT_S) -> int:
        """Wait for the program to end, then read the last of what it showed."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:.0f}s; the screen:\n{self.screen}") from None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        return code

    def close(self) -> None:
        if self.process.poll() is None:  # its own session, so the group is the demo and any runbook it started
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        os.close(self._fd)


def _redis_servers(data_dir: Path) -> list[int]:
    """The redis-server processes working in ``data_dir``: the demo's embedded Redis, while it runs. (Found by
    their working directory, the --dir they were given: redis-server rewrites its command line as it starts.)"""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "redis-server":
                if Path(os.readlink(entry / "cwd")).is_relative_to(data_dir):
                    found.append(int(entry.name))
        except OSError:  # it ended while we looked, or is not ours to look into
            continue
    return found


class Terminals:
    """Starts ``python -m graphs`` on terminals of their own, all with one data dir, like a person rerunning it."""

    def __init__(self, runbooks: Runbooks, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATOPS_", "REDIS_URL"))}
        self.env.update(CHATOPS_RUNBOOKS_DIR=str(runbooks.dir), CHATOPS_DATA_DIR=str(self.data_dir), TERM="dumb")
        self.started: list[Terminal] = []

    def start(self, *args: str) -> Terminal:
        self.started.append(Terminal(list(args), self.env))
        return self.started[-1]

    def redis_servers(self) -> list[int]:
        return _redis_servers(self.data_dir)

    def stop_all(self) -> None:
        for term in self.started:
            term.close()
        for pid in self.redis_servers():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def terminals(runbooks: Runbooks, tmp_path: Path) -> Iterator[Terminals]:
    """Each program, and any embedded Redis of the test's data dir, is stopped afterwards, whatever happened."""
    started = Terminals(runbooks, tmp_path / "data")
    try:
        yield started
    finally:
        started.stop_all()


def _ctrl_c_at_the_first_approval(terminals: Terminals, runbooks: Runbooks) -> Terminal:
    demo = terminals.start(TASK)
    demo.expect("1. run_runbook\n     name: disk-usage\n")
    demo.expect(PROMPT)
    servers = terminals.redis_servers()
    assert len(servers) == 1, f"the demo should run one embedded Redis, found {servers}"
    # In a session of its own: the terminal's Ctrl-C is not the server's to receive.
    assert os.getsid(servers[0]) != os.getsid(demo.process.pid)
    demo.type(CTRL_C)
    assert demo.exit_code(timeout=STOP_S) == 130, demo.screen
    assert "Traceback" not in demo.screen
    run = re.search(r"^run (\w+)\n", demo.screen, re.MULTILINE)
    assert run, demo.screen
    # Said once all is closed: nothing ran, and the review waits for the next `--pending`.
    said = f"interrupted — nothing else ran (run {run[1]} waits for review: python -m graphs --pending)"
    assert demo.screen.endswith(f"{PROMPT}^C\n{said}\n"), demo.screen
    assert "<- run_runbook" not in demo.screen and runbooks.executions() == []  # nothing ran
    assert terminals.redis_servers() == []  # stopped with the demo, not left behind
    return demo


def test_ctrl_c_at_the_approval_prompt_exits_at_once(terminals, runbooks):
    _ctrl_c_at_the_first_approval(terminals, runbooks)


def test_pending_lists_what_waits_before_asking(terminals, runbooks):
    _ctrl_c_at_the_first_approval(terminals, runbooks)  # the run waits for that review, in the data dir's Redis

    pending = terminals.start("--pending")
    listed = pending.expect(PROMPT).splitlines()
    count = listed.index("1 waiting for review:")
    age = r"(less than a minute|\d+ min|\d+ h|\d+ days?) ago"
    run = rf"  run \w{{8}}, {age}: {re.escape(TASK)} — waiting: run_runbook\(name=disk-usage\)"
    assert re.fullmatch(run, listed[count + 1]), listed
    assert "Approval needed for:" in listed[count + 2 :]  # listed first, then asked
    pending.type("a\r")
    pending.expect("run_runbook ok")
    pending.expect("1. post_message\n     channel: #ops\n")
    pending.expect(PROMPT)
    pending.type("r\r")
    pending.expect("reason (optional): ")
    pending.type("not now\r")
    assert pending.exit_code() == 0, pending.screen
    assert re.search(r"post_message: .*rejected.*not now", pending.screen, re.IGNORECASE), pending.screen
    assert len(runbooks.executions("disk-usage")) == 1
    assert terminals.redis_servers() == []

    again = terminals.start("--pending")
    assert again.exit_code() == 0, again.screen
    assert "nothing is waiting for review" in again.screen and PROMPT not in again.screen


def test_the_listing_shows_each_run_on_one_line():
    """Its age, its task clipped to one line (hidden characters shown), every call it waits on."""
    now = 1_800_000_000.0
    action = {"name": "post_message", "args": {"channel": "#ops", "text": "hi"}, "description": "", "tool_call_id": "c"}
    request = {"action_requests": [action, {**action, "args": {"channel": "#dev", "text": "x"}}], "review_configs": []}
    old = PendingReview("aaaa1111", "i1", request, task="post hi\u202e to " + "#ops " * 30, created_at=now - 3 * 3600)
    new = PendingReview("bbbb2222", "i2", request, task="line one\nline two", created_at=now - 190)
    assert _listing([old, new], now).splitlines() == [
        "2 waiting for review:",
        "  run aaaa1111, 3 h ago: post hi⟨U+202E⟩ to #ops #ops #ops #ops #ops #ops #ops #ops #ops #op…"
        " — waiting: post_message(channel=#ops, text=hi), post_message(channel=#dev, text=x)",
        "  run bbbb2222, 3 min ago: line one⟨LF⟩line two"
        " — waiting: post_message(channel=#ops, text=hi), post_message(channel=#dev, text=x)",
    ]
