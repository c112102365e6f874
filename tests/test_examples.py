"""Every example the product shows a person does real work in the sandbox (issue 10), and `make reset`.

The examples are read from the texts themselves, so a new one is covered without touching this file:
- `bot/commands.py` USAGE and each SUBCOMMAND_USAGE text, and README.md: every `backticked` span that starts with
  `@chatops ` or `/chatops ` and holds no placeholder (`<task>`, `[<run>]`), except the bare command name
  `/chatops run` (prose naming the command, not something to type);
- `bot/lifecycle.py` EMPTY_ASK: every _italic_ span (Slack's `_…_`), an ask without the mention;
- the web UI (`sandbox/web/static/*.js|*.html`): the strings of app.js's `EXAMPLES` array, which the page renders
  as `data-example` buttons, and any literal `data-example="…"` attribute.
`@chatops X` and `/chatops run X` are asks: the offline planner, configured as the sandbox configures the bot, must
propose at least one tool call for X, and an `http_check` of the sandbox's health endpoint must pass the outbound
guard with the sandbox's allowlist and get 200. Any other `/chatops …` is a command: in the running sandbox it must
answer (not "I don't know" or "Usage:"). One end-to-end test sends every example to the real sandbox process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

import bot.commands
import bot.lifecycle
from graphs.builtin_tools import BUNDLED_RUNBOOKS
from graphs.embedded_redis import EmbeddedRedis, free_port
from graphs.outbound import OutboundGuard
from graphs.planner import OFFLINE_LABEL, OfflinePlanner, make_model
from graphs.settings import CoreSettings
from sandbox.__main__ import bot_env, model_label, start_slack
from sandbox.datadir import DataDirLock, reset
from sandbox.health import HEALTH_BODY, health_env, health_url
from sandbox.slack import LocalSlack

from .test_sandbox_browser import Sandbox

ROOT = Path(__file__).resolve().parents[1]
WEB_STATIC = ROOT / "sandbox" / "web" / "static"
BACKTICKED = re.compile(r"`([^`\n]+)`")
SLACK_ITALIC = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")
SHOWN_EXAMPLE = re.compile(r"(?:@chatops|/chatops) \S")
PLACEHOLDER = re.compile(r"[<\[]")
JS_EXAMPLES = re.compile(r"\bconst EXAMPLES\s*=\s*\[(.*?)\]", re.DOTALL)
JS_STRING = re.compile(r"""(["'])((?:\\.|(?!\1).)*)\1""")
DATA_EXAMPLE = re.compile(r"""data-example=(["'])([^"'$]*)\1""")
TOOLS = ("http_check", "run_runbook", "search_runbooks", "post_message")
E2E_WAIT_S = 60.0


# --- finding the examples -------------------------------------------------------------------------------------


def shown_in(text: str) -> list[str]:
    """The backticked `@chatops …` / `/chatops …` spans of a text, placeholders left out."""
    spans = BACKTICKED.findall(text)
    return [s for s in spans if SHOWN_EXAMPLE.match(s) and not PLACEHOLDER.search(s) and s.strip() != "/chatops run"]


def web_ui_examples() -> list[str]:
    found: list[str] = []
    for path in sorted(WEB_STATIC.glob("*.js")) + sorted(WEB_STATIC.glob("*.html")):
        source = path.read_text()
        for array in JS_EXAMPLES.findall(source):
            found += [json.loads(f'"{m[1]}"') if m[0] == '"' else m[1] for m in JS_STRING.findall(array)]
        found += [m[1] for m in DATA_EXAMPLE.findall(source) if m[1]]
    return found


def examples_by_source() -> dict[str, list[str]]:
    return {
        "bot/commands.py USAGE": shown_in(bot.commands.USAGE),
        **{f"bot/commands.py help of {verb}": shown_in(text) for verb, text in bot.commands.SUBCOMMAND_USAGE.items()},
        "bot/lifecycle.py EMPTY_ASK": [f"@chatops {s}" for s in SLACK_ITALIC.findall(bot.lifecycle.EMPTY_ASK)],
        "README.md": shown_in((ROOT / "README.md").read_text()),
        "sandbox web UI": web_ui_examples(),
    }


def all_examples() -> list[str]:
    return sorted({e for found in examples_by_source().values() for e in found})


def as_ask(example: str) -> str | None:
    """The task an example asks for (a mention or `/chatops run …`), or None for another /chatops command."""
    if example.startswith("@chatops "):
        return example.removeprefix("@chatops ").strip()
    if example.startswith("/chatops run "):
        return example.removeprefix("/chatops run ").strip()
    return None


ASKS = sorted({ask for e in all_examples() if (ask := as_ask(e))})
COMMANDS = sorted({e for e in all_examples() if as_ask(e) is None})


def test_each_text_that_shows_examples_still_yields_some():
    """The extraction must keep finding what the texts show; otherwise the tests below would cover nothing."""
    found = examples_by_source()
    for source in ("bot/commands.py USAGE", "bot/commands.py help of run", "bot/lifecycle.py EMPTY_ASK", "README.md"):
        assert found[source], f"no example found in {source}: has its format changed?"
    assert found["sandbox web UI"], "no example found in the web UI (app.js EXAMPLES / data-example)"
    assert "check the API and run the disk-usage runbook" in ASKS  # USAGE and EMPTY_ASK
    assert "check the API health" in ASKS  # /chatops run's help
    assert "/chatops help" in COMMANDS  # the web UI
    assert not any(PLACEHOLDER.search(e) for e in all_examples())


# --- the planner as the sandbox configures it -----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_slack() -> Iterator[LocalSlack]:
    """The sandbox's local Slack with its routes (web UI and /health), on a free port."""
    slack = start_slack(free_port(), model_label({}))
    try:
        yield slack
    finally:
        slack.stop()


def sandbox_settings(slack: LocalSlack, user_env: dict[str, str] | None = None) -> CoreSettings:
    """The core settings the sandbox's bot reads, for a person who set `user_env` (default: nothing)."""
    return CoreSettings.from_env(bot_env(user_env or {}, slack, "redis://127.0.0.1:1/0"))


def plan(settings: CoreSettings, ask: str) -> AIMessage:
    planner = make_model(settings, settings.runbooks_dir or BUNDLED_RUNBOOKS)
    assert isinstance(planner, OfflinePlanner), "the sandbox with no model configured plans offline"
    answer = planner.invoke([HumanMessage(ask)])
    assert isinstance(answer, AIMessage)
    return answer


def test_the_sandbox_points_the_bot_at_its_own_health_endpoint_and_allows_only_that(local_slack):
    env = bot_env({}, local_slack, "redis://127.0.0.1:1/0")
    url = f"http://127.0.0.1:{local_slack.port}/health"
    assert env["CHATOPS_HEALTH_URL"] == url
    assert env["CHATOPS_HTTP_ALLOW"] == url  # a URL prefix: /health and below, no other route of the local Slack
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == HEALTH_BODY


def test_a_users_own_allowlist_is_kept_and_their_health_url_wins():
    url = "http://127.0.0.1:9/health"
    assert health_env({"CHATOPS_HTTP_ALLOW": "10.0.0.0/8, status.internal"}, url) == {
        "CHATOPS_HEALTH_URL": url,
        "CHATOPS_HTTP_ALLOW": f"10.0.0.0/8, status.internal {url}",
    }
    # Their own health URL: nothing is added, what they set is passed through as it is.
    assert health_env({"CHATOPS_HEALTH_URL": "http://api.internal/up", "CHATOPS_HTTP_ALLOW": "api.internal"}, url) == {}
    assert health_env({"CHATOPS_HEALTH_URL": ""}, url)["CHATOPS_HEALTH_URL"] == url  # empty counts as unset
    assert health_url("http://127.0.0.1:8765/") == "http://127.0.0.1:8765/health"


@pytest.mark.parametrize("ask", ASKS)
async def test_every_example_ask_plans_tool_calls_and_its_checks_pass_in_the_sandbox(local_slack, ask):
    for user_env in ({}, {"CHATOPS_HTTP_ALLOW": "10.0.0.0/8"}):  # nothing set, and an allowlist of the user's
        settings = sandbox_settings(local_slack, user_env)
        answer = plan(settings, ask)
        assert answer.tool_calls, f"{ask!r} maps to no tool in the sandbox: {answer.content}"
        assert "could not map" not in str(answer.content)
        if re.search(r"\b(api|health)\b", ask, re.IGNORECASE):  # an example that says API checks it
            assert "http_check" in [c["name"] for c in answer.tool_calls], answer.tool_calls
        guard = OutboundGuard(settings.allowlist)
        for call in answer.tool_calls:
            assert call["name"] in TOOLS
            if call["name"] != "http_check":
                continue
            url = call["args"]["url"]
            assert url == settings.health_url
            assessment = await guard.assess(url)
            assert assessment.mode == "auto", assessment  # allowlisted: runs without a card
            fetched = await guard.fetch(url, reviewed=False)
            assert fetched.status == 200, fetched.summary()
            assert "sandbox-api" in fetched.excerpt


async def test_check_the_api_is_checked_and_the_rest_of_the_local_slack_is_not_reachable(local_slack):
    settings = sandbox_settings(local_slack)
    answer = plan(settings, "check the API")
    assert [c["name"] for c in answer.tool_calls] == ["http_check"]
    guard = OutboundGuard(settings.allowlist)
    for path in ("ui/state?user=U0BOB", "ui/calls", "api/auth.test", "healthz"):
        assessment = await guard.assess(local_slack.url + path)
        assert assessment.mode == "deny", (path, assessment)


def test_without_the_sandbox_health_url_check_the_api_maps_to_nothing():
    """What issue 10 measured, kept as the reason for the above: no health URL, no tool."""
    answer = OfflinePlanner(runbooks_dir=BUNDLED_RUNBOOKS).invoke([HumanMessage("check the API")])
    assert not answer.tool_calls
    assert str(answer.content).startswith(OFFLINE_LABEL)


# --- the real sandbox process ---------------------------------------------------------------------------------


def ui(box: Sandbox, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(box.url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def thread_replies(box: Sandbox, channel: str, ts: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"user": "U0ALICE", "channel": channel, "thread": ts})
    state = ui(box, f"ui/state?{query}")
    return list((state.get("thread") or {}).get("replies") or [])


def outcome(replies: list[dict[str, Any]]) -> str | None:
    """ "card", "done" or "nothing" once the bot has answered an ask in its thread; None while it works."""
    texts = [m["text"] for m in replies if m["user"] == "U0BOT"]
    if any("could not map" in t for t in texts):
        return "nothing"
    if any(t.startswith("Approval needed") for t in texts):
        return "card"
    if any(":white_check_mark: Done" in t for t in texts):
        return "done" if any(tool in t for t in texts for tool in TOOLS) else "nothing"
    return None


def make_reset(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data_dir)}
    return subprocess.run(
        ["make", "--no-print-directory", "reset"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(180)
def test_every_example_does_real_work_in_the_running_sandbox_and_reset_waits_for_it(tmp_path):
    data_dir = tmp_path / "data"
    venv = (ROOT / ".venv").is_dir()
    box = Sandbox(data_dir, free_port())
    try:
        port = box.url.rsplit(":", 1)[1].strip("/")
        assert f"health:    http://127.0.0.1:{port}/health (what 'check the API' checks)" in box.output()

        # Every ask as a mention in #ops, all at once: each starts its own thread.
        asked = {}
        for ask in ASKS:
            sent = ui(box, "ui/send", {"user": "U0ALICE", "channel": "#ops", "text": f"@chatops {ask}"})
            assert sent["ok"], sent
            asked[ask] = sent["ts"]
        channel = ui(box, "ui/state?user=U0ALICE")["channel"]
        # Every other /chatops command shown answers the caller (ack text), not "I don't know" or "Usage:".
        for command in COMMANDS:
            sent = ui(box, "ui/send", {"user": "U0ALICE", "channel": "#ops", "text": command})
            assert sent["ok"], sent
            answer = sent["deliveries"][0]["body"]
            assert answer and not answer.startswith(("I don't know", "Usage:")), (command, answer)

        outcomes: dict[str, str | None] = dict.fromkeys(ASKS)
        replies: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + E2E_WAIT_S
        while time.monotonic() < deadline and None in outcomes.values():
            for ask, ts in asked.items():
                if outcomes[ask] is None:
                    replies[ask] = thread_replies(box, channel, ts)
                    outcomes[ask] = outcome(replies[ask])
            time.sleep(0.3)
        failed = {
            ask: [m["text"] for m in replies.get(ask, [])] for ask, o in outcomes.items() if o in (None, "nothing")
        }
        assert not failed, f"examples that did no work in the sandbox: {failed}\n{box.output()[-2000:]}"

        # "check the API" alone needs nobody: the health check runs, through the guard, and the run ends ok.
        sent = ui(box, "ui/send", {"user": "U0ALICE", "channel": "#ops", "text": "@chatops check the API"})
        deadline = time.monotonic() + E2E_WAIT_S
        done = ""
        while time.monotonic() < deadline and not done:
            texts = [m["text"] for m in thread_replies(box, channel, sent["ts"]) if m["user"] == "U0BOT"]
            done = next((t for t in texts if ":white_check_mark: Done" in t), "")
            time.sleep(0.3)
        assert f"http_check: ok: GET http://127.0.0.1:{port}/health -&gt; 200 OK" in done, done
        assert '"service": "sandbox-api"' in done, done

        # `make reset` refuses while the sandbox runs, and removes nothing.
        refused = make_reset(data_dir)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert "a sandbox is running on" in refused.stderr, refused.stderr
        assert (data_dir / "redis").is_dir() and (data_dir / "sandbox-bot.log").exists()

        assert box.stop(signal.SIGINT) == 0, box.output()[-3000:]
        assert "Traceback" not in box.output(), box.output()[-3000:]
    finally:
        box.kill()
    (data_dir / "sandbox.out").unlink()  # the test harness's own file, not the sandbox's
    cleared = make_reset(data_dir)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "cleared" in cleared.stdout and not data_dir.exists(), cleared.stdout
    assert (ROOT / ".venv").is_dir() == venv  # reset keeps .venv


# --- make reset -----------------------------------------------------------------------------------------------


def test_reset_clears_the_sandboxs_data_and_leaves_other_files(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "redis" / "appendonlydir").mkdir(parents=True)
    (data_dir / "redis" / "appendonlydir" / "appendonly.aof.1.incr.aof").write_text("*1\r\n")
    (data_dir / "sandbox-bot.log").write_text("log\n")
    (data_dir / "notes.txt").write_text("mine")
    removed, kept = reset(data_dir)
    assert sorted(removed) == ["redis", "sandbox-bot.log", "sandbox.lock"]
    assert kept == ["notes.txt"] and (data_dir / "notes.txt").read_text() == "mine"
    assert reset(tmp_path / "missing") == ([], [])


def test_reset_is_refused_while_a_sandbox_holds_the_data_dir_or_a_redis_server_keeps_its_data_there(tmp_path):
    from sandbox.datadir import DataDirBusy

    data_dir = tmp_path / "data"
    lock = DataDirLock(data_dir).acquire("http://127.0.0.1:1/")
    try:
        with pytest.raises(DataDirBusy, match=r"a sandbox is running on .*pid \d+, http://127\.0\.0\.1:1/"):
            reset(data_dir)
        with pytest.raises(DataDirBusy):  # nor can a second sandbox start on it
            DataDirLock(data_dir).acquire()
    finally:
        lock.release()

    server = EmbeddedRedis(data_dir / "redis").start()  # as `python -m bot` or `make demo` starts one
    try:
        if Path("/proc").is_dir():  # how a redis-server is seen (its current directory); elsewhere the lock alone
            with pytest.raises(DataDirBusy, match=r"redis-server \(pid \d+\)"):
                reset(data_dir)
            assert (data_dir / "redis").is_dir()
    finally:
        server.stop()
    removed, _ = reset(data_dir)
    assert "redis" in removed and not data_dir.exists()
