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
    """Numbered screenshots under artifacts/sandbox-browser/, listed at the end of the test; each test's own
    `prefix`, so one test's run replaces its own screenshots only."""

    def __init__(self, page: object, prefix: str = "") -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob(f"{prefix}[0-9][0-9]-*.png"):
            old.unlink()
        self.page, self.n, self.prefix = page, 0, prefix
        self.paths: list[Path] = []

    def __call__(self, name: str) -> None:
        self.n += 1
        path = ARTIFACTS / f"{self.prefix}{self.n:02d}-{name}.png"
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

        # Alice asks in #ops by mentioning the bot; the composer turns "@chatops" into <@U0BOT>. She opens the thread
        # herself before the page hears back from the send (as happens under load: the answer waits for the bot's
        # ack), so the page must not open it again for her later, e.g. right after she closes it.
        held: list[tuple[object, object]] = []
        page.route("**/ui/send", lambda route: held.append((route, route.fetch())))
        page.fill("#composer-input", TASK)
        page.press("#composer-input", "Enter")
        asked = page.locator("#messages .msg[data-user='U0ALICE']").last
        expect(asked).to_contain_text("@chatops run the disk-usage and memory-usage runbooks")
        expect(asked.locator(".mention")).to_have_text("@chatops")
        asked.click()  # opens its thread in the side pane
        thread = page.locator("#thread-messages")
        expect(page.locator("#thread")).to_be_visible()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert held, "the page never sent /ui/send"
        with page.expect_response("**/ui/send"):
            held[0][0].fulfill(response=held[0][1])  # type: ignore[attr-defined]
        page.unroute("**/ui/send")

        progress = thread.locator(".msg:not(.root)[data-user='U0BOT']").first
        expect(progress).to_be_visible()
        first_progress = progress.locator(".msg-body").inner_text()
        card = thread.locator(".msg").filter(has=page.locator(".b-header", has_text="Approval needed")).first
        expect(card).to_be_visible()
        expect(card.locator("input[data-act='tick']")).to_have_count(2)  # disk-usage and memory-usage
        expect(card.locator("button.btn.primary", has_text="Approve selected")).to_be_visible()
        expect(card.locator("button.btn.danger", has_text="Reject")).to_be_visible()
        expect(progress).to_contain_text("anything that needs approval gets an approval card first")
        card_ts = card.get_attribute("data-ts")
        shots("approval-card")

        # Alice may not approve her own run: the refusal is an ephemeral only she sees, in the thread she clicked in.
        card.locator("button", has_text="Approve selected").click()
        refusal = thread.locator(".msg.ephemeral")
        expect(refusal).to_contain_text("You asked for this run, so someone else")
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
        expect(card).to_contain_text(re.compile("(❌|⛔) rejected"))  # the mark is changing
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
        # Closed stays closed: over the next polls the pane never shows again, and no poll the page starts after the
        # click asks for the thread. Recorded in the page, in the order its own code runs.
        page.evaluate(
            """() => {
              const pane = document.querySelector('#thread');
              window.shown = 0;
              window.polls = null; // the /ui/state URLs fetched since the close button was clicked
              new MutationObserver(() => { if (!pane.hidden) window.shown++; })
                .observe(pane, {attributes: true, attributeFilter: ['hidden']});
              document.addEventListener('click', (e) => {
                if (e.target.closest('#thread-close')) window.polls = [];
              }, true);
              const fetch = window.fetch;
              window.fetch = (url, ...rest) => {
                if (window.polls && String(url).startsWith('/ui/state')) window.polls.push(String(url));
                return fetch(url, ...rest);
              };
            }"""
        )
        page.locator("#thread-close").click()
        expect(page.locator("#thread")).to_be_hidden()
        # A poll of the loop starts only after the one before it is drawn: four of them span several redraws.
        page.wait_for_function("() => window.polls && window.polls.length >= 4")
        expect(page.locator("#thread")).to_be_hidden()
        assert page.evaluate("() => window.shown") == 0, "the closed thread opened again by itself"
        polls = page.evaluate("() => window.polls")
        assert not [u for u in polls if "thread=" in u], f"the page kept asking for the closed thread: {polls}"
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


def test_a_dm_request_is_decided_in_the_review_channel_and_a_reject_ends_the_run(sandbox, browser_context, capsys):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    page = browser_context.new_page()
    shots = Shots(page, prefix="dm-")
    approvals = "#channel-list a:has-text('approvals')"
    card_header = page.locator(".b-header")
    try:
        page.goto(sandbox.url)
        expect(page.locator("#bot-status")).to_have_text("bot connected")
        page.select_option("#acting-user", "U0ALICE")

        # Alice opens her DM with the bot from the sidebar and asks there, without a mention.
        page.click("#dm-list a:has-text('chatops')")
        expect(page.locator("#channel-name")).to_have_text("🤖 chatops")
        page.fill("#composer-input", "run the disk-usage runbook")
        page.press("#composer-input", "Enter")
        asked = page.locator("#messages .msg[data-user='U0ALICE']").last
        expect(asked).to_contain_text("run the disk-usage runbook")
        asked.click()
        thread = page.locator("#thread-messages")
        expect(page.locator("#thread-channel")).to_have_text("with chatops")
        # Nobody but Alice sees this DM: the card is not here, and her progress message links to it in #approvals.
        progress = thread.locator(".msg:not(.root)[data-user='U0BOT']").first
        expect(progress).to_contain_text("Waiting for approval")
        expect(progress).to_contain_text("the card is in #approvals: open it")
        expect(thread.locator(".msg").filter(has=card_header)).to_have_count(0)
        link = progress.locator("a", has_text="open it")
        expect(link).to_have_attribute("href", re.compile(r"/archives/C0APPROVALS/p\d{16}$"))
        shots("dm-waiting-with-link")

        # The link opens the card where it is: a message of its own in #approvals.
        link.click()
        expect(page.locator("#channel-name")).to_have_text("# approvals")
        card = thread.locator(".msg.root")
        expect(card.locator(".b-header")).to_have_text("Approval needed")
        expect(card).to_contain_text("run_runbook")
        expect(card).to_contain_text("disk-usage")
        card_ts = card.get_attribute("data-ts")

        # Bob opens #approvals himself: the card is a top-level message there, saying where it was asked.
        page.select_option("#acting-user", "U0BOB")
        page.click(approvals)
        expect(page.locator("#thread")).to_be_hidden()
        card = page.locator(f"#messages .msg[data-ts='{card_ts}']")
        expect(card.locator(".b-header")).to_have_text("Approval needed")
        expect(card.locator(".b-context")).to_contain_text("asked in a DM with the bot")
        expect(card).to_contain_text("@alice")
        shots("bob-sees-card-in-approvals")
        card.locator("button", has_text="Approve selected").click()
        expect(card.locator(".b-header")).to_have_text("Approval decided")
        expect(card).to_contain_text("✅ approved")
        expect(card).to_contain_text("Decided by @bob")
        expect(card.locator(".msg-body button")).to_have_count(0)  # the card's own buttons are gone
        shots("bob-approved")

        # Back in Alice's DM, the run's progress message says it is done.
        page.select_option("#acting-user", "U0ALICE")
        page.click("#dm-list a:has-text('chatops')")
        expect(page.locator("#channel-name")).to_have_text("🤖 chatops")
        page.locator("#messages .msg[data-user='U0ALICE']").last.click()
        progress = thread.locator(".msg:not(.root)[data-user='U0BOT']").first
        expect(progress).to_contain_text("✅ Done")
        expect(progress).to_contain_text("disk-usage — ok")
        shots("dm-done")

        # A second request from the DM. The offline planner runs the runbook first; only if the agent may go on after
        # its calls are rejected would it then propose the post to #ops, on a new card.
        page.locator("#thread-close").click()
        page.fill("#composer-input", "run the memory-usage runbook and post a summary to #ops")
        page.press("#composer-input", "Enter")
        expect(page.locator("#messages .msg[data-user='U0ALICE']")).to_have_count(2)
        page.select_option("#acting-user", "U0CAROL")
        page.click(approvals)
        waiting = page.locator("#messages .msg").filter(has=page.locator(".b-header", has_text="Approval needed"))
        expect(waiting).to_have_count(1)
        expect(waiting).to_contain_text("memory-usage")
        card = page.locator(f"#messages .msg[data-ts='{waiting.get_attribute('data-ts')}']")

        # Carol is no approver: Edit… and Reject… tell her so at once, in the channel, and open no dialog.
        refusals = page.locator("#messages .msg.ephemeral")
        card.locator("button", has_text="Edit…").click()
        expect(refusals.last).to_contain_text("Only @bob can approve this card; nothing was changed.")
        expect(refusals.last).to_contain_text("Only visible to you")
        expect(page.locator("#modal")).to_have_count(0)
        card.locator("button", has_text="Reject…").click()
        expect(refusals).to_have_count(2)
        expect(refusals.last).to_contain_text(
            re.compile(r"Only @bob or @alice, who asked for it,? can reject this card; nothing was changed\.")
        )
        expect(page.locator("#modal")).to_have_count(0)
        expect(card.locator(".b-header")).to_have_text("Approval needed")
        shots("carol-refused")

        # Bob rejects with a reason and leaves "Let the agent try another way" unticked: the run ends.
        page.select_option("#acting-user", "U0BOB")
        expect(refusals).to_have_count(0)  # Carol's answers are hers alone
        card.locator("button", has_text="Reject…").click()
        modal = page.locator("#modal")
        expect(modal.locator(".modal-head")).to_contain_text("Reject")
        replan = modal.locator(".field[data-block-id='replan'] input[type='checkbox']")
        expect(replan).not_to_be_checked()
        expect(modal.locator(".field[data-block-id='replan']")).to_contain_text("Let the agent try another way")
        modal.locator(".field[data-block-id='reason'] textarea").fill("memory is fine, no need")
        shots("bob-reject-dialog")
        modal.locator("#modal-submit").click()
        expect(modal).to_have_count(0)
        expect(card.locator(".b-header")).to_have_text("Approval decided")
        expect(card).to_contain_text("⛔ rejected (memory is fine, no need)")
        expect(card.locator(".msg-body button")).to_have_count(0)  # the card's own buttons are gone
        shots("bob-rejected")

        # Alice's DM thread: nothing ran, and no new card was posted in #approvals for another try.
        page.select_option("#acting-user", "U0ALICE")
        page.click("#dm-list a:has-text('chatops')")
        expect(page.locator("#channel-name")).to_have_text("🤖 chatops")
        expect(page.locator("#messages .msg[data-user='U0ALICE']")).to_have_count(2)
        page.locator("#messages .msg[data-user='U0ALICE']").last.click()
        expect(thread.locator(".msg.root")).to_contain_text("run the memory-usage runbook")
        progress = thread.locator(".msg:not(.root)[data-user='U0BOT']").first
        expect(progress).to_contain_text("⛔ Nothing ran: every call was rejected or not allowed")
        expect(progress).to_contain_text("memory-usage — rejected by @bob (memory is fine, no need)")
        shots("dm-nothing-ran")
        page.click(approvals)
        expect(page.locator("#channel-name")).to_have_text("# approvals")
        expect(page.locator("#messages .msg").filter(has=card_header)).to_have_count(2)
        expect(page.locator("#messages .b-header", has_text="Approval needed")).to_have_count(0)
        # The only dialog the bot opened in all this is Bob's: Carol's clicks opened none.
        page.click("#tab-inspector")
        page.fill("#log-filter", "views.open")
        expect(page.locator("#log-list .log-entry")).to_have_count(1)
        page.fill("#log-filter", "chat.postEphemeral")
        expect(page.locator("#log-list .log-entry")).to_have_count(2)
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
