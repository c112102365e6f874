"""`python -m sandbox` (`make run`): the whole bot in a browser, with no Slack workspace.

Starts an embedded Redis (data kept in CHATOPS_DATA_DIR, default .chatops-data), the real bot in HTTP mode
(`python -m bot`), and the local Slack with its web UI on 127.0.0.1; prints the URL; Ctrl-C stops them all.
With no OPENAI_API_KEY / OPENAI_BASE_URL / CHATOPS_MODEL set, the bot's offline planner plans. The local Slack also
serves `GET /health`, the API that "check the API" checks (sandbox/health.py), unless CHATOPS_HEALTH_URL names another.
While it runs it holds `<data dir>/sandbox.lock`, so a second sandbox or `make reset` on that data dir is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from graphs.embedded_redis import EmbeddedRedis
from graphs.errors import ChatOpsError
from graphs.model_errors import check_model
from graphs.settings import DEFAULT_MODEL
from sandbox.datadir import DataDirLock
from sandbox.health import health_env, health_label, health_routes, health_url
from sandbox.processes import BotProcess
from sandbox.slack import LocalSlack
from sandbox.web import Persona, UiConfig, ui_routes

DEFAULT_PORT = 8765
BOT_TOKEN = "xoxb-sandbox-local"
MODEL_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHATOPS_MODEL")
# Settings of the bot that make sense in the sandbox too; anything Slack-specific is the sandbox's to set.
PASSED_THROUGH = (
    *MODEL_VARS,
    "CHATOPS_RUNBOOKS_DIR",
    "CHATOPS_HEALTH_URL",
    "CHATOPS_RUNBOOK_TIMEOUT",
    "CHATOPS_TTL_MINUTES",
    "CHATOPS_POLICY_FILE",
    "CHATOPS_EXPIRES_AFTER",
    "CHATOPS_HTTP_ALLOW",
    "CHATOPS_RUNBOOK_ENV",
    "CHATOPS_REVIEW_ALL",
    "LOG_LEVEL",
)
REVIEW_CHANNEL = "approvals"  # the sandbox's CHATOPS_REVIEW_CHANNEL, unless one is set
# Alice asks and administers, Bob approves, Carol may not approve: enough people to try every permission rule.
APPROVERS = "U0ALICE U0BOB"
ADMINS = "U0ALICE"
PERSONAS = (
    Persona("U0ALICE", "Alice", "requester, admin"),
    Persona("U0BOB", "Bob", "approver"),
    Persona("U0CAROL", "Carol", "not an approver"),
)


def model_label(env: Mapping[str, str]) -> str:
    if not any(env.get(name) for name in MODEL_VARS):
        return "offline planner (no model configured)"
    name = env.get("CHATOPS_MODEL") or DEFAULT_MODEL
    return f"{name} at {env['OPENAI_BASE_URL']}" if env.get("OPENAI_BASE_URL") else name


def model_check(env: Mapping[str, str]) -> str:
    """The start-up model check's line (graphs.model_errors.check_model), as the bot also logs it."""
    configured = any(env.get(name) for name in MODEL_VARS)
    checked = asyncio.run(
        check_model(env.get("OPENAI_BASE_URL"), env.get("OPENAI_API_KEY"), env.get("CHATOPS_MODEL"), configured)
    )
    return checked.line


def bot_env(env: Mapping[str, str], slack: LocalSlack, redis_url: str) -> dict[str, str]:
    passed = {name: env[name] for name in PASSED_THROUGH if env.get(name)}
    return {
        **passed,
        **health_env(env, health_url(slack.url)),
        # Cards of DM requests go where the approvers are (the requester alone sees a DM).
        "CHATOPS_REVIEW_CHANNEL": env.get("CHATOPS_REVIEW_CHANNEL") or slack.add_channel(REVIEW_CHANNEL),
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": slack.signing_secret,
        "SLACK_API_URL": slack.api_url,
        "REDIS_URL": redis_url,
        "CHATOPS_APPROVERS": APPROVERS,
        "CHATOPS_ADMINS": ADMINS,
    }


def start_slack(port: int | None, label: str) -> LocalSlack:
    """The local Slack on `port`; with no port asked for, 8765 if free, else any free port."""
    ui = ui_routes(
        UiConfig(
            model_label=label,
            personas=PERSONAS,
            notes=(
                "Approvers: Alice and Bob (CHATOPS_APPROVERS); nobody approves their own run. Admin: Alice.",
                f"Cards of requests made in a DM go to #{REVIEW_CHANNEL} (CHATOPS_REVIEW_CHANNEL).",
            ),
        )
    )

    def routes(slack: LocalSlack) -> list[web.AbstractRouteDef]:
        return [*ui(slack), *health_routes()]

    # A fresh signing secret per start: nothing but this process's bot can sign for it.
    secret = secrets.token_hex(16)
    for candidate in [port] if port is not None else [DEFAULT_PORT, 0]:
        slack = LocalSlack(secret, bot_token=BOT_TOKEN, port=candidate, extra_routes=routes)
        try:
            return slack.start()
        except RuntimeError as exc:
            if port is not None or candidate == 0:
                cause = exc.__cause__ or exc
                raise SystemExit(f"sandbox: cannot serve on 127.0.0.1:{candidate}: {cause}") from None
    raise AssertionError("unreachable")


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port of the web UI (default: SANDBOX_PORT, else {DEFAULT_PORT} if free, else any)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where Redis keeps its data and the bot its log (default: CHATOPS_DATA_DIR or .chatops-data)",
    )
    args = parser.parse_args(argv)
    if args.port is None and env.get("SANDBOX_PORT"):
        if not env["SANDBOX_PORT"].isdigit():
            parser.error(f"SANDBOX_PORT must be a port number, got {env['SANDBOX_PORT']!r}")
        args.port = int(env["SANDBOX_PORT"])
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port must be 1-65535, got {args.port}")
    args.data_dir = args.data_dir or Path(env.get("CHATOPS_DATA_DIR") or ".chatops-data")
    return args


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    args = parse_args(argv, env)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # Installed first, so a Ctrl-C or SIGTERM during start-up also ends in the orderly stop below.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    label = model_label(env)
    if env.get("SLACK_BOT_TOKEN"):
        print(
            "sandbox: SLACK_BOT_TOKEN is set, but this is the sandbox: it talks to a local Slack only. "
            "To connect to your real workspace, run `python -m bot` instead.",
            flush=True,
        )

    with contextlib.ExitStack() as cleanup:
        # The children must not see the terminal's Ctrl-C themselves: Redis would exit under the bot while the bot
        # is still finishing work. They inherit a blocked SIGINT and are stopped in order (bot, then Redis) below.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            print(f"sandbox: starting Redis (data in {args.data_dir}), the local Slack and the bot…", flush=True)
            # The data dir first: one sandbox per data dir (two Redis servers on one append-only file would ruin it).
            lock = DataDirLock(args.data_dir).acquire("starting")
            cleanup.callback(lock.release)
            # The port next: a busy --port fails at once. Stopped in reverse: the bot, then Redis, then the UI.
            slack = start_slack(args.port, label)
            cleanup.callback(slack.stop)
            lock.note(slack.url)
            redis = EmbeddedRedis(args.data_dir / "redis").start()
            cleanup.callback(redis.stop)
            if not stop.is_set():
                bot = BotProcess(bot_env(env, slack, redis.url), args.data_dir / "sandbox-bot.log")
                cleanup.callback(bot.stop)
                bot.start()
                slack.bot_url = bot.url
        except (RuntimeError, ChatOpsError) as exc:
            print(f"sandbox: could not start: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if stop.is_set():
            print("sandbox: stopped during start-up", flush=True)
            return 0
        checked = model_check(env)
        print(
            f"\nThe chat-ops sandbox is running: open {slack.url} in your browser.\n"
            f"  model:     {label}\n"
            f"             {checked}\n"
            f"  people:    Alice (requester, admin), Bob (approver), Carol (not an approver): switch at the top\n"
            f"  health:    {health_label(env, health_url(slack.url))}\n"
            f"  approvals: cards of DM requests go to "
            f"{env.get('CHATOPS_REVIEW_CHANNEL') or '#' + REVIEW_CHANNEL} (CHATOPS_REVIEW_CHANNEL)\n"
            f"  data:      {args.data_dir}/ (Redis on {redis.url}); bot log: {bot.log_path}\n"
            f"Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while not stop.wait(0.5):
            if not bot.running:
                print(f"sandbox: the bot exited; see {bot.log_path}:\n{bot.log()[-2000:]}", file=sys.stderr, flush=True)
                return 1
        print("sandbox: stopping the bot, Redis and the local Slack…", flush=True)
    print("sandbox: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
