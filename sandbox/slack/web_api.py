"""The Slack Web API of the local Slack (`/api/<method>`) plus the response_url and permalink endpoints.

Answers like slack.com: HTTP 200 with `{"ok": true, ...}` or `{"ok": false, "error": ...}`, 429 + Retry-After when
rate limited. Parameters are read from the query string, a form body or a JSON body alike, because slack-sdk mixes
them: AsyncWebClient sends chat.*/views.* as JSON and everything else as URL query parameters (even on POST).
Bot methods take the bot token; `apps.connections.open` (Socket Mode) takes the app-level token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import blockkit
from .calllog import CallLog
from .limits import Limiter
from .workspace import JSON, SlackError, Workspace

# Parameters that carry JSON when sent as a form or query string.
_JSON_PARAMS = ("blocks", "view", "attachments", "metadata")
# Methods called with the app-level token (xapp-…) rather than the bot token.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})


@dataclass
class ApiContext:
    """What the handlers share; `base_url` is read at call time because the port is known only after start."""

    workspace: Workspace
    limiter: Limiter
    log: CallLog
    bot_token: str
    base_url: Callable[[], str]
    app_token: str | None = None  # Socket Mode's app-level token; None: apps.connections.open refuses every token
    socket_url: Callable[[], str] | None = None  # a fresh WebSocket URL for apps.connections.open
    # Added to every Web API call and response_url post before it is handled, as the network and slack.com add
    # to each call (tens to hundreds of ms); 0 = answer at once. Settable any time (LocalSlack.api_latency_ms).
    latency_ms: float = 0.0

    async def delay(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)


Handler = Callable[[ApiContext, JSON], JSON]
HANDLERS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def build_routes(ctx: ApiContext) -> list[web.RouteDef]:
    async def api(request: web.Request) -> web.Response:
        return await _api_call(ctx, request)

    async def response_url(request: web.Request) -> web.Response:
        return await _response_url(ctx, request)

    async def permalink(request: web.Request) -> web.Response:
        # A UI will render the message here; for now say what the link points at.
        return web.json_response(
            {
                "channel": request.match_info["channel"],
                "p": request.match_info["p"],
                "thread_ts": request.query.get("thread_ts"),
            }
        )

    return [
        web.route("*", "/api/{method}", api),
        web.post("/response/{token}", response_url),
        web.get("/archives/{channel}/{p}", permalink),
    ]


# ---------------------------------------------------------------------- request plumbing


async def _read_params(request: web.Request) -> JSON:
    params: JSON = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            raw = await request.text()
            if raw:
                body = json.loads(raw)  # ValueError -> invalid_json, as Slack answers
                if not isinstance(body, dict):
                    raise ValueError("JSON body must be an object")
                params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    for key in _JSON_PARAMS:
        if isinstance(params.get(key), str):
            try:
                params[key] = json.loads(params[key])
            except ValueError:
                raise SlackError(f"invalid_{key}_format" if key != "view" else "invalid_arguments") from None
    return params


def _check_token(ctx: ApiContext, method_name: str, token: str) -> None:
    """The right kind of token for the method, or Slack's error: the other kind is `not_allowed_token_type`."""
    wanted: str | None
    other: str | None
    if method_name in APP_TOKEN_METHODS:
        wanted, other = ctx.app_token, ctx.bot_token
    else:
        wanted, other = ctx.bot_token, ctx.app_token
    if token != wanted:
        raise SlackError("not_allowed_token_type" if token == other else "invalid_auth")


def _token(request: web.Request, params: JSON) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    token = params.get("token")
    return token if isinstance(token, str) else None


async def _api_call(ctx: ApiContext, request: web.Request) -> web.Response:
    started = time.perf_counter()
    await ctx.delay()
    name = request.match_info["method"]
    headers: dict[str, str] = {}
    params: JSON = {}
    status = 200
    try:
        params = await _read_params(request)
        if name not in HANDLERS:
            raise SlackError("unknown_method")
        token = _token(request, params)
        if not token:
            raise SlackError("not_authed")
        _check_token(ctx, name, token)
        verdict = ctx.limiter.check(name, params)
        if verdict.status != 200:
            status = verdict.status
            if verdict.retry_after is not None:
                headers["Retry-After"] = str(verdict.retry_after)
            raise SlackError(verdict.error or "internal_error")
        body: JSON = {"ok": True, **HANDLERS[name](ctx, params)}
    except SlackError as e:
        body = {"ok": False, "error": e.error}
        if e.messages:
            body["response_metadata"] = {"messages": e.messages}
    except ValueError:
        body = {"ok": False, "error": "invalid_json"}
    except Exception as e:  # noqa: BLE001 - a bug here must show in the log, not hang the bot
        status = 500
        body = {"ok": False, "error": "internal_error", "detail": repr(e)}
    ctx.log.add(
        "api",
        method=name,
        http_method=request.method,
        params=params,
        response=body,
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        unknown=name not in HANDLERS,
    )
    return web.json_response(body, status=status, headers=headers)


async def _response_url(ctx: ApiContext, request: web.Request) -> web.Response:
    started = time.perf_counter()
    await ctx.delay()
    token = request.match_info["token"]
    status, payload = 200, {}
    body: JSON = {"ok": True}
    try:
        raw = await request.text()
        if request.content_type == "application/x-www-form-urlencoded":
            payload = json.loads((await request.post()).get("payload", "{}"))  # type: ignore[arg-type]
        else:
            payload = json.loads(raw or "{}")
        _apply_response(ctx.workspace, ctx.workspace.use_response_url(token), payload)
    except SlackError as e:
        status = 404 if e.error in ("invalid_url", "expired_url", "used_url") else 400
        body = {
            "ok": False,
            "error": e.error,
            **({"response_metadata": {"messages": e.messages}} if e.messages else {}),
        }
    except ValueError:
        status, body = 400, {"ok": False, "error": "invalid_payload"}
    ctx.log.add(
        "response_url",
        method="response_url",
        params=payload,
        response=body,
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return web.json_response(body, status=status)


def _apply_response(ws: Workspace, rctx: JSON, payload: JSON) -> None:
    """What Slack does with a response_url post: replace/delete the original, or post in channel / ephemerally."""
    original_ts = rctx.get("message_ts")
    if _bool(payload.get("delete_original")):
        if not original_ts:
            raise SlackError("no_original_message")
        if rctx.get("is_ephemeral"):
            ws.replace_ephemeral(original_ts, None, None, delete=True)
        else:
            ws.delete_message(rctx["channel"], original_ts)
        return
    text, blocks = payload.get("text"), payload.get("blocks")
    problem = blockkit.check_message(text, blocks, payload.get("attachments"))
    if problem:
        raise SlackError(problem.error, problem.messages)
    if _bool(payload.get("replace_original")) and original_ts:
        if rctx.get("is_ephemeral"):
            ws.replace_ephemeral(original_ts, text, blocks, delete=False)
        else:
            ws.update_message(rctx["channel"], original_ts, text, blocks, by=ws.bot_user_id)
        return
    thread_ts = payload.get("thread_ts") or rctx.get("thread_ts")
    if payload.get("response_type") == "in_channel":
        ws.post_message(rctx["channel"], ws.bot_user_id, text, blocks, thread_ts=thread_ts)
    else:
        ws.post_ephemeral(rctx["channel"], rctx["user"], text, blocks, thread_ts=thread_ts, source="response_url")


# ---------------------------------------------------------------------- helpers


def _req(params: JSON, name: str, error: str = "invalid_arguments") -> Any:
    value = params.get(name)
    if value in (None, ""):
        raise SlackError(error, [f"[ERROR] missing required field: {name}"])
    return value


def _bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def _check_message(params: JSON) -> None:
    problem = blockkit.check_message(params.get("text"), params.get("blocks"), params.get("attachments"))
    if problem:
        raise SlackError(problem.error, problem.messages)


def _check_view(view: Any) -> JSON:
    problem = blockkit.check_view(view)
    if problem:
        raise SlackError(problem.error, problem.messages)
    return view  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- methods


@method("auth.test")
def auth_test(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    return {
        "url": ctx.base_url(),
        "team": "Local Slack",
        "user": ws.bot_name,
        "team_id": ws.team_id,
        "user_id": ws.bot_user_id,
        "bot_id": ws.bot_id,
        "app_id": ws.app_id,
        "is_enterprise_install": False,
    }


@method("chat.postMessage")
def chat_post_message(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    _check_message(params)
    msg = ws.post_message(
        channel, ws.bot_user_id, params.get("text"), params.get("blocks"), thread_ts=params.get("thread_ts") or None
    )
    return {"channel": channel, "ts": msg["ts"], "message": msg}


@method("chat.update")
def chat_update(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    ts = _req(params, "ts", "message_not_found")
    text, blocks = params.get("text"), params.get("blocks")
    if text is None and blocks is None:
        raise SlackError("no_text")
    problem = blockkit.check_message(text if text is not None else "-", blocks)
    if problem:
        raise SlackError(problem.error, problem.messages)
    msg = ws.update_message(channel, str(ts), text, blocks, by=ws.bot_user_id)
    return {"channel": channel, "ts": msg["ts"], "text": msg["text"], "message": msg}


@method("chat.postEphemeral")
def chat_post_ephemeral(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    user = _req(params, "user", "user_not_found")
    _check_message(params)
    record = ws.post_ephemeral(
        channel, user, params.get("text"), params.get("blocks"), thread_ts=params.get("thread_ts") or None
    )
    return {"message_ts": record["message_ts"]}


@method("chat.delete")
def chat_delete(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    ts = str(_req(params, "ts", "message_not_found"))
    try:
        ws.delete_message(channel, ts)
    except SlackError as e:
        raise SlackError("cant_delete_message" if e.error == "cant_update_message" else e.error) from None
    return {"channel": channel, "ts": ts}


@method("chat.getPermalink")
def chat_get_permalink(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    ts = str(_req(params, "message_ts", "message_not_found"))
    msg = ws.api_message(channel, ts)
    link = f"{ctx.base_url()}archives/{channel}/p{ts.replace('.', '')}"
    if msg.get("thread_ts") and msg["thread_ts"] != ts:
        link += f"?thread_ts={msg['thread_ts']}&cid={channel}"
    return {"channel": channel, "permalink": link}


@method("conversations.info")
def conversations_info(ctx: ApiContext, params: JSON) -> JSON:
    return {"channel": ctx.workspace.channel(_req(params, "channel", "channel_not_found"))}


@method("conversations.list")
def conversations_list(ctx: ApiContext, params: JSON) -> JSON:
    """Channels of the given types (public_channel, private_channel, im), paged by an opaque cursor as Slack does."""
    types = {t.strip() for t in str(params.get("types") or "public_channel").split(",") if t.strip()}
    try:
        limit = max(1, min(1000, int(params.get("limit") or 100)))
        start = int(params.get("cursor") or 0)
    except (TypeError, ValueError):
        raise SlackError("invalid_cursor") from None

    def kind(channel: JSON) -> str:
        if channel.get("is_im"):
            return "im"
        return "private_channel" if channel.get("is_private") else "public_channel"

    found = [c for c in ctx.workspace.channels() if kind(c) in types]
    page = found[start : start + limit]
    more = start + limit < len(found)
    return {"channels": page, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}


@method("conversations.history")
def conversations_history(ctx: ApiContext, params: JSON) -> JSON:
    try:
        limit = int(params.get("limit") or 100)
    except (TypeError, ValueError):
        raise SlackError("invalid_limit") from None
    messages = ctx.workspace.history(
        _req(params, "channel", "channel_not_found"),
        limit=limit,
        oldest=params.get("oldest"),
        latest=params.get("latest"),
    )
    return {"messages": messages, "has_more": False, "pin_count": 0, "response_metadata": {"next_cursor": ""}}


@method("conversations.replies")
def conversations_replies(ctx: ApiContext, params: JSON) -> JSON:
    channel = _req(params, "channel", "channel_not_found")
    try:
        messages = ctx.workspace.replies(channel, str(_req(params, "ts", "thread_not_found")))
    except SlackError as e:
        raise SlackError("thread_not_found" if e.error == "message_not_found" else e.error) from None
    return {"messages": messages, "has_more": False, "response_metadata": {"next_cursor": ""}}


@method("conversations.open")
def conversations_open(ctx: ApiContext, params: JSON) -> JSON:
    ws = ctx.workspace
    if params.get("channel"):
        return {"channel": {"id": ws.resolve_channel(params["channel"])}}
    users = [u for u in str(_req(params, "users", "users_list_not_supplied")).split(",") if u]
    if len(users) != 1:
        raise SlackError("not_implemented", ["[ERROR] the local Slack opens 1:1 DMs only"])
    cid = ws.dm_channel(users[0])
    channel = ws.channel(cid) if _bool(params.get("return_im")) else {"id": cid}
    return {"channel": channel, "no_op": False, "already_open": False}


@method("users.info")
def users_info(ctx: ApiContext, params: JSON) -> JSON:
    return {"user": ctx.workspace.user(_req(params, "user", "user_not_found"))}


@method("usergroups.list")
def usergroups_list(ctx: ApiContext, params: JSON) -> JSON:
    return {"usergroups": ctx.workspace.usergroups()}


@method("usergroups.users.list")
def usergroups_users_list(ctx: ApiContext, params: JSON) -> JSON:
    return {"users": ctx.workspace.usergroup_members(_req(params, "usergroup", "no_such_subteam"))}


def _reaction(ctx: ApiContext, params: JSON, add: bool) -> JSON:
    ws = ctx.workspace
    channel = ws.resolve_channel(_req(params, "channel", "channel_not_found"))
    ts = str(_req(params, "timestamp", "message_not_found"))
    name = str(_req(params, "name", "invalid_name")).strip(":")
    ws.react(channel, ts, name, ws.bot_user_id, add=add)
    return {}


@method("reactions.add")
def reactions_add(ctx: ApiContext, params: JSON) -> JSON:
    return _reaction(ctx, params, add=True)


@method("reactions.remove")
def reactions_remove(ctx: ApiContext, params: JSON) -> JSON:
    return _reaction(ctx, params, add=False)


@method("views.open")
def views_open(ctx: ApiContext, params: JSON) -> JSON:
    view = _check_view(_req(params, "view"))
    user = ctx.workspace.use_trigger(params.get("trigger_id") or params.get("interactivity_pointer"))
    return {"view": ctx.workspace.open_view(user, view)}


@method("views.push")
def views_push(ctx: ApiContext, params: JSON) -> JSON:
    view = _check_view(_req(params, "view"))
    user = ctx.workspace.use_trigger(params.get("trigger_id") or params.get("interactivity_pointer"))
    return {"view": ctx.workspace.push_view(user, view)}


@method("views.update")
def views_update(ctx: ApiContext, params: JSON) -> JSON:
    view = _check_view(_req(params, "view"))
    if not params.get("view_id") and not params.get("external_id"):
        raise SlackError("invalid_arguments", ["[ERROR] view_id or external_id is required"])
    return {
        "view": ctx.workspace.update_view(view, params.get("view_id"), params.get("external_id"), params.get("hash"))
    }


@method("apps.connections.open")
def apps_connections_open(ctx: ApiContext, params: JSON) -> JSON:
    if ctx.socket_url is None:
        raise SlackError("invalid_auth")
    return {"url": ctx.socket_url()}
