"""The sandbox's own API to check: `GET /health` on the local Slack's server, so the bot's own examples ("check the
API") do real work in the sandbox.

The offline planner turns a request that says *API*, *health* or *up* without a URL into `http_check` of
CHATOPS_HEALTH_URL. Unless the user set CHATOPS_HEALTH_URL, the sandbox points it at this endpoint and adds
exactly this URL to CHATOPS_HTTP_ALLOW (after the user's own entries, if any): a URL prefix, not the host and
port, so `http_check` may reach `/health` (and below it) but none of the local Slack's other routes, such as the
web UI's `/ui/state` with everyone's ephemerals. A user's own CHATOPS_HEALTH_URL is passed on untouched, with their
CHATOPS_HTTP_ALLOW as it is: which of their targets may be reached is theirs to say.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

HEALTH_PATH = "/health"
HEALTH_BODY = {"status": "ok", "service": "sandbox-api"}


def health_routes() -> list[web.AbstractRouteDef]:
    """For the local Slack's extra routes: `GET /health` (and HEAD) answering 200 with HEALTH_BODY."""
    return [web.get(HEALTH_PATH, _health)]


async def _health(request: web.Request) -> web.Response:
    return web.json_response(HEALTH_BODY)


def health_url(base_url: str) -> str:
    """The endpoint on the server at `base_url` (the local Slack's `http://127.0.0.1:N/`)."""
    return base_url.rstrip("/") + HEALTH_PATH


def health_env(env: Mapping[str, str], url: str) -> dict[str, str]:
    """What the bot gets besides the user's settings: CHATOPS_HEALTH_URL=`url` and `url` appended to
    CHATOPS_HTTP_ALLOW, unless the user set CHATOPS_HEALTH_URL (then nothing: theirs is passed through)."""
    if env.get("CHATOPS_HEALTH_URL"):
        return {}
    allow = " ".join(entry for entry in ((env.get("CHATOPS_HTTP_ALLOW") or "").strip(), url) if entry)
    return {"CHATOPS_HEALTH_URL": url, "CHATOPS_HTTP_ALLOW": allow}


def health_label(env: Mapping[str, str], url: str) -> str:
    """The banner's line: which URL "check the API" checks, and whose it is."""
    if env.get("CHATOPS_HEALTH_URL"):
        return f"{env['CHATOPS_HEALTH_URL']} (your CHATOPS_HEALTH_URL: what 'check the API' checks)"
    return f"{url} (what 'check the API' checks)"
