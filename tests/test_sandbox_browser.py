"""The sandbox as a person uses it: `python -m sandbox` started like the README says, driven in a real headless
Chromium (Debian's /usr/bin/chromium through the PyPI playwright package), then stopped with Ctrl-C / SIGTERM.

Screenshots of each step go to artifacts/sandbox-browser/ (gitignored) so a person can look at what was tested.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphs.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "sandbox-browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home, which this closed network must not see.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WAIT_MS = 15_000  # every browser wait is bounded by this
URL_LINE = re.compile(r"open (http://127\.0\.0\.1:(\d+)/) in your browser")
TASK = "@chatops run the disk-usage and memory-usage runbooks and post a summary to #ops"

pytestmark = pytest.mark.timeout(240)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (the bot and redis-server of a running sandbox)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces, so split after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Sandbox:
    """`python -m sandbox` in a subprocess with its own data dir, the offline planner and no Slack settings."""

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.log_path = data_dir / "sandbox.out"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "SLACK_", "CHATOPS_")) and k != "SANDBOX_PORT"
        }
        env.update(CHATOPS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "sandbox"] + (["--port", str(port)] if port else [])
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.url = self._wait_url()
        self.children = children_of(self.process.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = URL_LINE.search(self.output())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"the sandbox did not print its URL within {START_TIMEOUT_S}s:\n{self.output()[-3000:]}")

    def stop(self, sig: int) -> int:
        """Send `sig` like Ctrl-C or a service manager would; the exit code, and nothing may be left behind."""
        self.process.send_signal(sig)
        try:
            code = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the sandbox did not stop within {STOP_TIMEOUT_S}s of {signal.Signals(sig).name}")
        left = [pid for pid in self.children if alive(pid)]
        assert not left, f"processes left behind after {signal.Signals(sig).name}: {left}"
        return code

    def kill(self) -> None:
        """Clean-up after a failed test: the sandbox and whatever it started, however far it got."""
        children = children_of(self.process.pid) + self.children
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "data", free_port())
    try:
        yield box
    finally:
        box.kill()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the browser test needs Chromium at {CHROMIUM}: `make test` installs Debian's chromium when run as "
            "root; otherwise install it (apt-get install chromium) or set CHROMIUM=/path/to/chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1440, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


class Shots:
    """Numbered screenshots under artifacts/sandbox-browser/, listed at the end of the test."""

    def __init__(self, page: object) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()
        self.page, self.n = page, 0
        self.paths: list[Path] = []

    def __call__(self, name: str) -> None:
        self.n += 1
        path = ARTIFACTS / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path))  # type: ignore[attr-defined]
        self.paths.append(path)


def test_a_person_asks_approves_edits_and_lists_pending_in_the_browser(sandbox, browser_context, capsys):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    page = browser_context.new_page()
    shots = Shots(page)
    try:
        page.goto(sandbox.url)
        expect(page.locator("#channel-name")).to_have_text("# ops")
        expect(page.locator("#model")).to_contain_text("offline planner (no model configured)")
        expect(page.locator("#bot-status")).to_have_text("bot connected")
        shots("empty-channel")

        # Alice asks in #ops by mentioning the bot; the composer turns "@chatops" into <@U0BOT>.
        page.fill("#composer-input", TASK)
        page.press("#composer-input", "Enter")
        asked = page.locator("#messages .msg[data-user='U0ALICE']").last
        expect(asked).to_contain_text("@chatops run the disk-usage and memory-usage runbooks")
        expect(asked.locator(".mention")).to_have_text("@chatops")
        asked.click()  # opens its thread in the side pane
        thread = page.locator("#thread-messages")
        expect(page.locator("#thread")).to_be_visible()

        progress = thread.locator(".msg:not(.root)[data-user='U0BOT']").first
        expect(progress).to_be_visible()
        first_progress = progress.locator(".msg-body").inner_text()
        card = thread.locator(".msg").filter(has=page.locator(".b-header", has_text="Approval needed")).first
        expect(card).to_be_visible()
        expect(card.locator("input[data-act='tick']")).to_have_count(2)  # disk-usage and memory-usage
        expect(card.locator("button.btn.primary", has_text="Approve selected")).to_be_visible()
        expect(card.locator("button.btn.danger", has_text="Reject")).to_be_visible()
        expect(progress).to_contain_text("Waiting for approval")
        expect(progress).to_contain_text("✋")  # :raised_hand: drawn as an emoji
        card_ts = card.get_attribute("data-ts")
        shots("approval-card")

        # Alice may not approve her own run: the refusal is an ephemeral only she sees, in the thread she clicked in.
        card.locator("button", has_text="Approve selected").click()
        refusal = thread.locator(".msg.ephemeral")
        expect(refusal).to_contain_text("someone else has to approve")
        expect(refusal).to_contain_text("Only visible to you")
        shots("requester-refused")

        # Bob, an approver, unticks memory-usage and approves the rest.
        page.select_option("#acting-user", "U0BOB")
        expect(thread.locator(".msg.ephemeral")).to_have_count(0)  # Alice's ephemeral is hers alone
        card = thread.locator(f".msg[data-ts='{card_ts}']")
        boxes = card.locator("input[data-act='tick']")
        expect(boxes.nth(0)).to_be_checked()
        boxes.nth(1).uncheck()
        expect(boxes.nth(1)).not_to_be_checked()
        shots("bob-unticked-one-call")
        card.locator("button", has_text="Approve selected").click()
        expect(card.locator(".b-header")).to_have_text("Approval decided")
        expect(card).to_contain_text("✅ approved")
        expect(card).to_contain_text("❌ rejected")
        expect(card).to_contain_text("Decided by @bob")
        expect(card.locator("button")).to_have_count(0)

        # After the runbook, the planner wants to post the summary to #ops: a second card. Bob edits it.
        second = thread.locator(".msg").filter(has=page.locator(".b-header", has_text="Approval needed")).first
        expect(second).to_contain_text("post_message")
        second = thread.locator(f".msg[data-ts='{second.get_attribute('data-ts')}']")  # stays put once decided
        shots("second-card")

        # Alice, the admin, asks what is waiting: the slash command's answer is hers only, and links to the card.
        page.select_option("#acting-user", "U0ALICE")
        page.fill("#composer-input", "/chatops pending")
        page.press("#composer-input", "Enter")
        answer = page.locator("#messages .msg.ephemeral[data-source='slash_ack']").last
        expect(answer).to_contain_text("1 approval card waiting")
        expect(answer).to_contain_text("post_message")
        expect(answer).to_contain_text("Only visible to you")
        shots("chatops-pending")
        page.select_option("#acting-user", "U0BOB")
        expect(page.locator("#messages .msg.ephemeral")).to_have_count(0)
        page.locator("#thread-close").click()
        expect(page.locator("#thread")).to_be_hidden()
        answer_link = "#messages .msg.ephemeral a:has-text('open the card')"
        page.select_option("#acting-user", "U0ALICE")
        page.locator(answer_link).last.click()  # the permalink opens the thread in the page
        expect(page.locator("#thread")).to_be_visible()
        expect(second.locator(".b-header")).to_have_text("Approval needed")
        page.select_option("#acting-user", "U0BOB")
        second.locator("button", has_text="Edit…").click()
        modal = page.locator("#modal")
        expect(modal).to_be_visible()
        expect(modal.locator(".modal-head")).to_contain_text("Edit tool calls")
        channel_field = modal.locator(".field[data-block-id='arg_0_channel']")
        expect(channel_field.locator("input, textarea")).to_have_value("#ops")
        channel_field.locator("input, textarea").fill("")
        shots("edit-dialog")
        modal.locator("#modal-submit").click()
        expect(channel_field.locator(".field-error")).to_be_visible()
        expect(channel_field.locator(".field-error")).not_to_be_empty()
        expect(modal).to_be_visible()
        shots("edit-field-error")
        channel_field.locator("input, textarea").fill("#general")
        modal.locator("#modal-submit").click()
        expect(modal).to_have_count(0)

        expect(progress).to_contain_text("Done")
        expect(progress).to_contain_text("(edited)")
        assert progress.locator(".msg-body").inner_text() != first_progress, "the progress message was never edited"
        expect(second.locator(".b-header")).to_have_text("Approval decided")
        expect(second).to_contain_text("✏️ edited")
        shots("run-done")

        # The edited post landed in #general.
        page.click("#channel-list a:has-text('general')")
        expect(page.locator("#channel-name")).to_have_text("# general")
        expect(page.locator("#messages .msg[data-user='U0BOT']")).to_contain_text("disk-usage")
        shots("post-in-general")
        page.click("#channel-list a:has-text('ops')")

        # The inspector lists the Web API calls and deliveries, newest first, expandable.
        page.click("#tab-inspector")
        rows = page.locator("#log-list .log-entry")
        expect(rows.first).to_be_visible()
        expect(page.locator("#log-list .method", has_text="chat.update").first).to_be_visible()
        expect(page.locator("#log-list .method", has_text="block_actions").first).to_be_visible()
        expect(page.locator("#log-list .method", has_text="views.open").first).to_be_visible()
        seqs = [int(s) for s in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
        assert seqs == sorted(seqs, reverse=True), "the inspector must list newest first"
        page.locator("#log-list .log-entry").filter(has=page.locator(".method", has_text="views.open")).first.locator(
            ".log-row"
        ).click()
        expect(page.locator("#log-list .log-entry.open .log-detail")).to_contain_text("Edit tool calls")
        shots("inspector")
    except Exception:
        shots("failure")
        raise
    finally:
        page.close()
        with capsys.disabled():
            print("\nscreenshots:\n" + "\n".join(f"  {p}" for p in shots.paths))

    assert sandbox.stop(signal.SIGINT) == 0, sandbox.output()[-3000:]
    assert "Traceback" not in sandbox.output(), sandbox.output()[-3000:]


def test_without_a_port_it_takes_another_when_8765_is_busy_and_sigterm_stops_everything(tmp_path):
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8765))
        holder.listen()
    except OSError:
        pass  # already busy: the case under test either way
    try:
        box = Sandbox(tmp_path / "data", port=None)
        try:
            assert not box.url.endswith(":8765/"), box.url
            assert "offline planner (no model configured)" in box.output()
            assert box.children, "the sandbox started no bot or Redis"
            assert box.stop(signal.SIGTERM) == 0, box.output()[-3000:]
        finally:
            box.kill()
    finally:
        holder.close()
