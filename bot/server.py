"""Transports at the edge: HTTP mode (aiohttp, POST /slack/events, GET /healthz) and Socket Mode."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from redis.asyncio import Redis
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1024 * 1024


def web_app(app: AsyncApp, redis: Redis, *, mode: str) -> web.Application:
    async def slack_events(request: web.Request) -> web.Response:
        try:
            bolt_request = await to_bolt_request(request)
            response = await app.async_dispatch(bolt_request)
        except Exception as exc:  # noqa: BLE001 - Bolt raises on bodies it cannot parse; answer, don't crash
            log.warning(
                "refused a malformed Slack request (%s, %d bytes): %s: %s",
                request.content_type,
                request.content_length or 0,
                type(exc).__name__,
                exc,
            )
            return web.json_response({"ok": False, "error": "malformed_request"}, status=400)
        return await to_aiohttp_response(response)

    async def healthz(_: web.Request) -> web.Response:
        try:
            await redis.ping()
        except Exception as exc:  # noqa: BLE001 - the health check reports, it does not raise
            # Anyone who can reach the port reads this: no host, port or password, only that it is down.
            log.warning("health check: Redis is not answering (%s)", type(exc).__name__)
            return web.json_response({"ok": False, "mode": mode, "redis": "unreachable"}, status=503)
        return web.Response(text=json.dumps({"ok": True, "mode": mode}), content_type="application/json")

    web_application = web.Application(client_max_size=MAX_BODY_BYTES)
    web_application.add_routes([web.get("/healthz", healthz)])
    if mode == "http":  # in Socket Mode nothing is verified over HTTP, so nothing is accepted there
        web_application.add_routes([web.post(EVENTS_PATH, slack_events)])
    return web_application
