"""The sandbox web UI's HTTP side: the static page and the JSON routes it polls and posts to, on the local Slack's app.

The UI is a Slack client, not a back door: every action a person takes in the page goes through the local Slack's
own delivery methods (`post_user_message`, `slash_command`, `toggle_checkbox`, `click_button`, `submit_view`,
`close_view`), so the bot receives exactly the signed requests Slack would send. Reads come from the local Slack's
state accessors and its call log. Handlers run on the local Slack's event loop; deliveries are awaited there (they
use their own aiohttp client sessions, so the loop keeps serving the bot's Web API calls meanwhile).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.slack import Delivery, LocalSlack, SlackError
from sandbox.slack.blockkit import iter_elements

STATIC_DIR = Path(__file__).parent / "static"
# Bounds on what one poll returns: the page polls twice a second, so a long session must not grow the answer.
MAX_MESSAGES = 150
MAX_LOG_ENTRIES = 300
# The names the composer turns into a mention of the bot, as a Slack client turns "@chatops" into <@U0BOT>.
BOT_ALIASES = ("bot", "chatops")


@dataclass(frozen=True)
class Persona:
    user_id: str
    name: str
    role: str


@dataclass(frozen=True)
class UiConfig:
    """What the page shows besides Slack state: who you can act as and which model plans."""

    model_label: str = "offline planner (no model configured)"
    personas: tuple[Persona, ...] = (
        Persona("U0ALICE", "Alice", "requester, admin"),
        Persona("U0BOB", "Bob", "approver"),
        Persona("U0CAROL", "Carol", "not an approver"),
    )
    notes: tuple[str, ...] = field(default_factory=tuple)


def ui_routes(config: UiConfig | None = None) -> Callable[[LocalSlack], list[web.AbstractRouteDef]]:
    """For `LocalSlack(extra_routes=ui_routes(...))`: the page at `/` and its JSON API under `/ui/`."""
    cfg = config or UiConfig()

    def build(slack: LocalSlack) -> list[web.AbstractRouteDef]:
        return _Ui(slack, cfg).routes()

    return build


def _no_store(response: web.StreamResponse) -> web.StreamResponse:
    # The page and its scripts change with the code; a stale cached app.js would talk to new routes.
    response.headers["Cache-Control"] = "no-store"
    return response


class _Ui:
    def __init__(self, slack: LocalSlack, config: UiConfig) -> None:
        self.slack = slack
        self.ws = slack.workspace
        self.config = config

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/ui/state", self.state),
            web.get("/ui/calls", self.calls),
            web.post("/ui/send", self.send),
            web.post("/ui/tick", self.tick),
            web.post("/ui/click", self.click),
            web.post("/ui/submit", self.submit),
            web.post("/ui/close", self.close),
        ]

    # ------------------------------------------------------------------ static files

    async def index(self, request: web.Request) -> web.StreamResponse:
        return _no_store(web.FileResponse(STATIC_DIR / "index.html"))

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        # A flat folder of known files: no path segments, so nothing outside it can be asked for.
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return _no_store(web.FileResponse(path))

    # ------------------------------------------------------------------ reads

    def _user(self, request: web.Request) -> str:
        user = request.query.get("user") or self.config.personas[0].user_id
        self.ws.user(user)  # SlackError(user_not_found) for a stranger
        return user

    async def state(self, request: web.Request) -> web.Response:
        """Everything the page draws for one acting user: channels, one channel's messages, an open thread,
        that user's ephemerals and open modal. Other people's ephemerals and ticks never leave the server."""
        try:
            user = self._user(request)
        except SlackError as e:
            return web.json_response({"ok": False, "error": e.error}, status=400)
        dm = self.ws.dm_channel(user)
        channels = [
            {"id": c["id"], "name": c["name"], "kind": "channel"} for c in self.ws.channels() if not c.get("is_im")
        ] + [{"id": dm, "name": self.ws.bot_name, "kind": "dm"}]
        known = {c["id"] for c in channels}
        channel = request.query.get("channel") or channels[0]["id"]
        if channel not in known:
            channel = channels[0]["id"]
        messages = [self._with_ticks(user, m) for m in self.ws.messages(channel)[-MAX_MESSAGES:]]
        ephemerals = [
            self._with_ticks(user, self._ephemeral(e)) for e in self.ws.ephemerals(user) if e["channel"] == channel
        ]
        thread = None
        thread_ts = request.query.get("thread")
        root = self.ws.message(channel, thread_ts) if thread_ts else None
        if root is not None:
            thread = {
                "root": self._with_ticks(user, root),
                "replies": [self._with_ticks(user, m) for m in self.ws.messages(channel, thread_ts)[-MAX_MESSAGES:]],
            }
        views = self.ws.views(user, open_only=True)
        view = {"view": views[-1]["view"], "errors": views[-1]["errors"]} if views else None
        entries = self.slack.log.entries()
        return web.json_response(
            {
                "ok": True,
                "me": user,
                "bot_user_id": self.ws.bot_user_id,
                "team": self.ws.team_domain,
                "model": self.config.model_label,
                "notes": list(self.config.notes),
                "personas": [p.__dict__ for p in self.config.personas],
                "users": {
                    u["id"]: {"name": u["name"], "real_name": u["real_name"], "is_bot": u["is_bot"]}
                    for u in self.ws.users()
                },
                "channels": channels,
                "channel": channel,
                "messages": messages,
                "ephemerals": ephemerals,
                "thread": thread,
                "view": view,
                "bot_connected": bool(self.slack.bot_url),
                "log_seq": entries[-1]["seq"] if entries else 0,
            }
        )

    @staticmethod
    def _ephemeral(e: dict[str, Any]) -> dict[str, Any]:
        # "local" ephemerals come from the Slack client itself (Slackbot), the others from the bot.
        user = "USLACKBOT" if e["source"] == "local" else "U0BOT"
        return {
            "ts": e["message_ts"],
            "channel": e["channel"],
            "user": user,
            "text": e["text"],
            "blocks": e["blocks"],
            "thread_ts": e["thread_ts"],
            "ephemeral": True,
            "source": e["source"],
            "edited": 0,
            "reply_count": 0,
        }

    def _with_ticks(self, user: str, message: dict[str, Any]) -> dict[str, Any]:
        """Add this user's checkbox ticks ({block_id: {action_id: [values]}}): ticks are client-side state in
        Slack, so each acting user sees their own."""
        ticks: dict[str, dict[str, list[str | None]]] = {}
        for block, el in iter_elements(message.get("blocks") or []):
            if el.get("type") == "checkboxes" and block.get("block_id") and el.get("action_id"):
                try:
                    chosen = self.ws.ticks(user, message["channel"], message["ts"], block["block_id"], el["action_id"])
                except SlackError:
                    continue
                ticks.setdefault(block["block_id"], {})[el["action_id"]] = [o.get("value") for o in chosen]
        return {**message, "ticks": ticks}

    async def calls(self, request: web.Request) -> web.Response:
        """The call log for the inspector, newest first: entries after `since`, at most MAX_LOG_ENTRIES."""
        try:
            since = int(request.query.get("since") or 0)
        except ValueError:
            since = 0
        entries = self.slack.log.entries(since=since)[-MAX_LOG_ENTRIES:]
        entries.reverse()
        return web.json_response({"ok": True, "entries": entries}, dumps=_dumps)

    # ------------------------------------------------------------------ actions (all through the local Slack)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="expected a JSON body") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    async def _act(self, request: web.Request, action: Callable[[dict[str, Any], str], Any]) -> web.Response:
        body = await self._body(request)
        try:
            user = str(body.get("user") or "")
            self.ws.user(user)
            result = await action(body, user)
        except (SlackError, ValueError, KeyError) as e:
            # What the person did does not fit the state (a stale message, an unknown option): say so.
            return web.json_response({"ok": False, "error": getattr(e, "error", None) or str(e)}, status=400)
        except RuntimeError as e:  # bot_url not set yet: the bot is still starting
            return web.json_response({"ok": False, "error": str(e)}, status=503)
        return web.json_response({"ok": True, **result}, dumps=_dumps)

    async def send(self, request: web.Request) -> web.Response:
        async def action(body: dict[str, Any], user: str) -> dict[str, Any]:
            channel = self.ws.resolve_channel(body["channel"])
            text = str(body.get("text") or "").strip()
            if not text:
                raise ValueError("nothing to send")
            if text.startswith("/"):
                command, _, rest = text.partition(" ")
                if command != "/chatops":
                    # What a Slack client itself answers for a command no app registered.
                    self.ws.post_ephemeral(
                        channel,
                        user,
                        f"`{command}` is not a valid command. In this workspace the bot's command is `/chatops`.",
                        source="local",
                    )
                    return {"deliveries": []}
                delivery = await self.slack.slash_command(user, channel, command, rest.strip())
                return {"deliveries": [_summary(delivery)]}
            deliveries = await self.slack.post_user_message(
                user, channel, self.slack_text(text), thread_ts=body.get("thread_ts") or None
            )
            ts = deliveries[0].request["event"]["ts"] if deliveries else None
            return {"ts": ts, "deliveries": [_summary(d) for d in deliveries]}

        return await self._act(request, action)

    def slack_text(self, text: str) -> str:
        """What a Slack client sends for typed text: `@name` of a known member becomes `<@U…>`, `@chatops` and
        `@bot` the bot; `&`, `<` and `>` are escaped, as Slack's clients do."""
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        by_name = {u["name"].lower(): u["id"] for u in self.ws.users()}

        def mention(match: re.Match[str]) -> str:
            name = match.group(1).lower()
            if name in BOT_ALIASES:
                return f"<@{self.ws.bot_user_id}>"
            return f"<@{by_name[name]}>" if name in by_name else match.group(0)

        return re.sub(r"(?<![\w@])@([A-Za-z][\w.-]*)", mention, text)

    async def tick(self, request: web.Request) -> web.Response:
        async def action(body: dict[str, Any], user: str) -> dict[str, Any]:
            delivery = await self.slack.toggle_checkbox(
                user,
                body["channel"],
                str(body["ts"]),
                body["block_id"],
                body["action_id"],
                str(body["value"]),
                bool(body.get("checked")),
            )
            return {"deliveries": [_summary(delivery)]}

        return await self._act(request, action)

    async def click(self, request: web.Request) -> web.Response:
        async def action(body: dict[str, Any], user: str) -> dict[str, Any]:
            delivery = await self.slack.click_button(
                user, body["channel"], str(body["ts"]), body["action_id"], body.get("block_id")
            )
            return {"deliveries": [_summary(delivery)]}

        return await self._act(request, action)

    async def submit(self, request: web.Request) -> web.Response:
        async def action(body: dict[str, Any], user: str) -> dict[str, Any]:
            values = body.get("values") or {}
            if not isinstance(values, dict):
                raise ValueError("values must be {block_id: {action_id: value}}")
            delivery = await self.slack.submit_view(user, body["view_id"], values)
            return {"deliveries": [_summary(delivery)]}

        return await self._act(request, action)

    async def close(self, request: web.Request) -> web.Response:
        async def action(body: dict[str, Any], user: str) -> dict[str, Any]:
            delivery = await self.slack.close_view(user, body["view_id"])
            return {"deliveries": [_summary(delivery)] if delivery else []}

        return await self._act(request, action)


def _summary(d: Delivery) -> dict[str, Any]:
    """What the page needs to tell the person something went wrong (the full exchange is in the inspector)."""
    return {
        "kind": d.kind,
        "status": d.status,
        "error": d.error,
        "latency_ms": d.latency_ms,
        "notes": d.notes,
        "body": d.body[:2000],
    }


def _dumps(value: Any) -> str:
    # Log entries may hold bytes-like or odd values from raw deliveries; never fail the poll on them.
    return json.dumps(value, default=str)
