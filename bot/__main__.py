"""Start the bot: ``python -m bot``. HTTP mode unless SLACK_APP_TOKEN is set (then Socket Mode)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from graphs.errors import ConfigError
from graphs.policy import Policy
from graphs.runtime import open_runtime

from .app import build_app
from .approvers import Approvers, Directory
from .audit import AuditLog
from .channels import Channels
from .commands import Commands
from .post_tool import PostTool
from .server import web_app
from .settings import BotSettings
from .slack_runs import SlackRuns
from .store import SlackStore
from .updates import MessageUpdater

log = logging.getLogger("bot")


async def serve(settings: BotSettings, *, host: str) -> None:
    client = AsyncWebClient(token=settings.bot_token, base_url=settings.api_url)
    policy = Policy.from_env()
    post_tool = PostTool(client, Channels(client), lambda: policy.rule("post_message"))

    async with open_runtime(settings.core, post_message=post_tool.post, assess_post=post_tool.assess,
                            policy=policy) as runtime:
        prefix = settings.core.key_prefix
        updater = MessageUpdater(client, runtime.redis, per_minute=settings.update_budget_per_minute, prefix=prefix)
        await updater.start()
        store = SlackStore(runtime.redis, prefix=f"{prefix}slack:", ttl_s=settings.core.ttl_minutes * 60)
        directory = Directory(client)
        approvers = Approvers(directory, settings.approvers, allow_self_approval=settings.allow_self_approval)
        slack_runs = SlackRuns(runtime.runs, client, store, updater, approvers, AuditLog(runtime.redis, prefix=prefix))
        app = build_app(settings, client, slack_runs, Commands(slack_runs, directory, settings.admins))
        sweeper = asyncio.create_task(slack_runs.sweep(), name="sweeper")
        mode = "socket" if settings.socket_mode else "http"
        runner = web.AppRunner(web_app(app, runtime.redis, mode=mode), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, settings.port).start()
        socket_handler = None
        if settings.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import (
                AsyncSocketModeHandler,
            )

            socket_handler = AsyncSocketModeHandler(app, settings.app_token)
            await socket_handler.connect_async()
            log.info("connected to Slack in Socket Mode; health check on http://%s:%d/healthz", host, settings.port)
        else:
            log.info("listening on http://%s:%d/slack/events (HTTP mode)", host, settings.port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing work in flight")
        if socket_handler is not None:
            await socket_handler.close_async()
        await runner.cleanup()
        sweeper.cancel()
        await slack_runs.close()
        await updater.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = BotSettings.from_env()
        # Settings read while starting up (the policy file, CHATOPS_HTTP_ALLOW) stop it the same way.
        asyncio.run(serve(settings, host=os.environ.get("HOST", "0.0.0.0")))
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
