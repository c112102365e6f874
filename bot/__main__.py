"""Start the bot: ``python -m bot``. HTTP mode unless SLACK_APP_TOKEN is set (then Socket Mode)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from graphs.errors import ConfigError, UnknownRun
from graphs.model_errors import check_model
from graphs.runs import Runs
from graphs.runtime import open_runtime
from graphs.settings import CoreSettings

from .app import Surface, build_app
from .approvals import Approvals
from .approvers import Approvers, Directory
from .audit import AuditLog
from .channels import Channels
from .commands import Commands
from .lifecycle import Lifecycle
from .post_tool import PostTool
from .queue import RunQueue
from .run_messages import ReviewRouting, RunMessages
from .server import web_app
from .settings import BotSettings
from .slack_io import SlackIO
from .store import SlackStore
from .updates import MessageUpdater

log = logging.getLogger("bot")


async def serve(settings: BotSettings) -> None:
    client = AsyncWebClient(token=settings.bot_token, base_url=settings.api_url)
    policy = settings.core.policy
    post_tool = PostTool(client, Channels(client), lambda: policy.rule("post_message"))

    async with open_runtime(settings.core, post_message=post_tool.post, assess_post=post_tool.assess) as runtime:
        keys = settings.core.keys
        updater = MessageUpdater(client, runtime.redis, per_minute=settings.update_budget_per_minute, keys=keys)
        await updater.start()
        io = SlackIO(client)
        store = SlackStore(runtime.redis, keys=keys, ttl_s=settings.core.ttl_minutes * 60)
        audit = AuditLog(runtime.redis, keys=keys)
        directory = Directory(client)
        approvers = Approvers(directory, settings.approvers, policy, allow_self_approval=settings.allow_self_approval)
        routing = ReviewRouting(settings.review_channel, settings.review_all)
        messages = RunMessages(io, store, updater, runtime.runs, approvers, audit, routing)
        # Without a review channel, a DM request is told at once that no approver will see its cards.
        queue = RunQueue(
            runtime.redis,
            keys,
            workers=settings.max_active_runs,
            per_user=settings.max_runs_per_user,
            started_since=lambda run_id, since: started_since(runtime.runs, run_id, since),
            ttl_s=settings.core.ttl_minutes * 60,
        )
        lifecycle = Lifecycle(
            io, store, runtime.runs, messages, audit, warn_dm=not settings.allow_self_approval, queue=queue
        )
        approvals = Approvals(io, store, runtime.runs, approvers, audit, messages, lifecycle.expire)
        commands = Commands(runtime.runs, store, lifecycle, audit, io, directory, settings.admins)
        app = build_app(settings, client, Surface(io, store, lifecycle, approvals, commands))
        sweeper = asyncio.create_task(lifecycle.sweep(), name="sweeper")
        model_check = asyncio.create_task(log_model_check(settings.core), name="model-check")
        await queue.start(lifecycle.run_queued)
        mode = "socket" if settings.socket_mode else "http"
        runner = web.AppRunner(web_app(app, runtime.redis, mode=mode), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        socket_handler = None
        if settings.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import (
                AsyncSocketModeHandler,
            )

            socket_handler = AsyncSocketModeHandler(app, settings.app_token)
            await socket_handler.connect_async()
            log.info(
                "connected to Slack in Socket Mode; health check on http://%s:%d/healthz", settings.host, settings.port
            )
        else:
            log.info("listening on http://%s:%d/slack/events (HTTP mode)", settings.host, settings.port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing work in flight")
        if socket_handler is not None:
            await socket_handler.close_async()
        await runner.cleanup()
        await queue.close()
        sweeper.cancel()
        model_check.cancel()
        await io.close()
        await updater.close()


async def log_model_check(core: CoreSettings) -> None:
    """One line at start-up: is the model reachable, and does it return structured tool calls? (In the background:
    a cold local model can take seconds to answer, and Slack's events must not wait for it.)"""
    checked = await check_model(core.openai_base_url, core.openai_api_key, core.model, core.model_configured)
    log.log(logging.INFO if checked.tool_calls in ("structured", "offline") else logging.WARNING, "%s", checked.line)


async def started_since(runs: Runs, run_id: str, since: float) -> bool:
    """Whether the run's task began after ``since`` (the run index was written then): for a queued task whose
    worker stopped, whether it must not be started again."""
    try:
        info = await runs.info(run_id)
    except UnknownRun:
        return False
    return float(info.get("updated_at") or 0) >= since


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = BotSettings.from_env(os.environ)  # every setting, from this one mapping, checked here
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    logging.getLogger().setLevel(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
