"""The Bolt app: Slack events, clicks, dialogs and /chatops, each acknowledged at once and handed on."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.exceptions import RedisError
from slack_bolt import BoltResponse
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from .approvals import Approvals, Click
from .cards import (
    APPROVE_ACTION,
    EDIT_ACTION,
    EDIT_CALLBACK,
    REJECT_ACTION,
    REJECT_CALLBACK,
    SELECT_ACTION,
    SHOW_ARGS_ACTION,
    SHOW_TASK_ACTION,
    parse_reason,
)
from .commands import ACK_WAIT_S, FOLLOWS, Commands
from .errors import DialogRefused
from .lifecycle import Lifecycle
from .settings import BotSettings
from .slack_io import NOT_RECORDED, SlackIO, Where
from .store import SlackStore, ViewBinding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Surface:
    """What the listeners hand work to."""

    io: SlackIO
    store: SlackStore
    lifecycle: Lifecycle
    approvals: Approvals
    commands: Commands


def missing_fields(body: dict[str, Any]) -> str | None:
    """What a signed payload lacks that its handler needs, or None. Slack always sends these; a payload
    without them is forged or broken, and is acked and refused rather than left to hang or crash."""
    kind = body.get("type")
    if kind == "block_actions":
        if not isinstance(body.get("user"), dict) or not body["user"].get("id"):
            return "user"
        container = body.get("container")
        if not isinstance(container, dict) or not container.get("channel_id") or not container.get("message_ts"):
            return "container"
        if not isinstance(body.get("actions"), list) or not body["actions"]:
            return "actions"
    elif kind == "view_submission":
        if not isinstance(body.get("user"), dict) or not body["user"].get("id"):
            return "user"
        if not isinstance(body.get("view"), dict) or not body["view"].get("id"):
            return "view"
    elif body.get("command"):
        for name in ("user_id", "channel_id"):
            if not body.get(name):
                return name
    return None


def build_app(settings: BotSettings, client: AsyncWebClient, surface: Surface) -> AsyncApp:
    io, store, lifecycle, approvals, commands = (
        surface.io,
        surface.store,
        surface.lifecycle,
        surface.approvals,
        surface.commands,
    )
    app = AsyncApp(
        client=client,
        signing_secret=settings.signing_secret or "",
        request_verification_enabled=not settings.socket_mode,
        process_before_response=False,
    )

    # A payload without a user or container would otherwise hang 3 s and get a 404 (or a 500 for a command).
    @app.middleware
    async def refuse_incomplete(body: dict[str, Any], next: Callable[[], Awaitable[None]]) -> BoltResponse | None:  # noqa: A002
        missing = missing_fields(body)
        if missing is None:
            await next()
            return None
        log.warning("refused a signed %s without %s", body.get("type") or body.get("command") or "request", missing)
        return BoltResponse(status=200, body="")  # the ack: nothing was done

    async def ask_from_event(event: dict[str, Any], body: dict[str, Any]) -> None:
        event_id = body.get("event_id")
        where = Where(event["channel"], event["user"], event.get("thread_ts") or event["ts"])
        try:
            first = not event_id or await store.first_delivery(event_id)
        except RedisError as exc:
            log.error("could not record event %s (%s): Redis is not answering", event_id, type(exc).__name__)
            io.spawn(io.tell(where, NOT_RECORDED), f"tell {event_id}")
            return
        if not first:
            log.info("ignored a repeated delivery of event %s (retry %s)", event_id, body.get("retry_num", "?"))
            return
        io.spawn(
            lifecycle.ask(
                channel=event["channel"],
                user=event["user"],
                text=event.get("text", ""),
                message_ts=event["ts"],
                thread_ts=event.get("thread_ts"),
            ),
            f"ask {event_id}",
            where=where,
        )

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("user") and event.get("channel") and event.get("ts"):
            await ask_from_event(event, body)

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any]) -> None:
        # Channel messages that mention the bot arrive as app_mention too; only DMs start runs here.
        if (
            event.get("channel_type") == "im"
            and not event.get("subtype")
            and not event.get("bot_id")
            and event.get("user")
            and event.get("channel")
            and event.get("ts")
        ):
            await ask_from_event(event, body)

    def where_of(binding: ViewBinding) -> Where:
        return Where(binding.channel, binding.user, binding.thread_ts or None)

    def click_of(body: dict[str, Any]) -> Click:
        container = body["container"]
        thread_ts = container.get("thread_ts") or (body.get("message") or {}).get("thread_ts")
        return Click(
            body["user"]["id"],
            container["channel_id"],
            container["message_ts"],
            thread_ts,
            body.get("trigger_id") or "",
        )

    @app.action(re.compile(f"^{SELECT_ACTION}_\\d+$"))
    async def on_tick(ack: AsyncAck) -> None:
        await ack()  # ticks live in the card's state until a button is clicked

    @app.action(APPROVE_ACTION)
    async def on_approve(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        click = click_of(body)
        io.spawn(
            approvals.decide(
                value=action.get("value"), click=click, state_values=(body.get("state") or {}).get("values")
            ),
            f"approve {str(action.get('value'))[:40]}",
            where=click.where,
        )

    @app.action(EDIT_ACTION)
    @app.action(REJECT_ACTION)
    async def on_dialog_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        click = click_of(body)
        kind = "edit" if action["action_id"] == EDIT_ACTION else "reject"
        # Awaited, not spawned: the trigger id expires 3 s after the click.
        await io.run(
            approvals.open_dialog(value=action.get("value"), click=click, kind=kind), f"{kind} dialog", click.where
        )

    @app.action(re.compile(f"^{SHOW_ARGS_ACTION}_\\d+$"))
    async def on_show_arguments(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        click = click_of(body)
        index = int(action["action_id"].rsplit("_", 1)[1])
        await io.run(
            approvals.open_arguments(value=action.get("value"), index=index, click=click), "show in full", click.where
        )

    @app.action(SHOW_TASK_ACTION)
    async def on_show_task(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        click = click_of(body)
        await io.run(approvals.open_task(value=action.get("value"), click=click), "show the task", click.where)

    @app.view(EDIT_CALLBACK)
    async def on_edit_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = body["user"]["id"]
        try:
            ref, binding = await approvals.dialog(view, user, "edit")
            decisions, errors = await approvals.check_edit(ref, binding, (view.get("state") or {}).get("values"))
        except DialogRefused as refusal:
            await ack(response_action="errors", errors={"include_0": str(refusal)})
            return
        except RedisError:
            await ack(response_action="errors", errors={"include_0": NOT_RECORDED})
            return
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        if await store.unbind_view(view.get("external_id") or ""):  # once: a replayed submission finds nothing
            io.spawn(approvals.submit_edit(ref, binding, decisions), f"edit {ref.value}", where=where_of(binding))

    @app.view(REJECT_CALLBACK)
    async def on_reject_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = body["user"]["id"]
        try:
            ref, binding = await approvals.dialog(view, user, "reject")
        except DialogRefused as refusal:
            await ack(response_action="errors", errors={"reason": str(refusal)})
            return
        except RedisError:
            await ack(response_action="errors", errors={"reason": NOT_RECORDED})
            return
        await ack()
        if await store.unbind_view(view.get("external_id") or ""):
            reason, replan = parse_reason((view.get("state") or {}).get("values"))
            io.spawn(
                approvals.veto(ref, binding, reason, replan=replan), f"reject {ref.value}", where=where_of(binding)
            )

    @app.command("/chatops")
    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        # The answer is acked if it is ready within ACK_WAIT_S (most are, in milliseconds); else the ack says
        # FOLLOWS and the answer goes through the command's response_url once ready: never a late ack.
        what = f"/chatops {(command.get('text') or '')[:40]}"
        where = Where(command["channel_id"], command["user_id"])
        answering = asyncio.ensure_future(commands.handle(command))
        await asyncio.wait({answering}, timeout=ACK_WAIT_S)
        if not answering.done():
            await ack(text=FOLLOWS)
            io.spawn(answer_later(answering, respond, what, where), what, where=where)
            return
        try:
            answer, work = answering.result()
        except RedisError as exc:
            log.error("%s: Redis is not answering (%s)", what[:29], type(exc).__name__)
            await ack(text=NOT_RECORDED)
            return
        await ack(text=answer) if answer else await ack()
        if work is not None:
            io.spawn(work, what, where=where)

    async def answer_later(
        answering: asyncio.Future[tuple[str, Any]], respond: AsyncRespond, what: str, where: Where
    ) -> None:
        """Send a /chatops answer that was not ready for the ack, then do its work (a refusal or a Redis outage
        on the way is said by SlackIO.run, like any other work)."""
        try:
            answer, work = await answering
        except RedisError as exc:
            log.error("%s: Redis is not answering (%s)", what[:29], type(exc).__name__)
            answer, work = NOT_RECORDED, None
        except Exception:  # a bug: the caller was promised an answer, so say that there is none
            log.exception("%s failed", what)
            answer, work = "I could not answer that: something went wrong on my side (it is in my log).", None
        if answer:
            try:
                sent = await respond(text=answer)
                delivered = sent.status_code == 200
                if not delivered:
                    log.warning("%s: the response_url answered %s", what, sent.status_code)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:  # ValueError: no response_url
                log.warning("%s: the response_url could not be used (%s)", what, type(exc).__name__)
                delivered = False
            if not delivered:
                await io.tell(where, answer)  # the same words, as an ephemeral message of the bot's own
        if work is not None:
            await work

    @app.error
    async def on_error(error: Exception, body: dict[str, Any] | None = None) -> None:
        kind = (body or {}).get("type") or (body or {}).get("command") or "request"
        log.error("could not handle a Slack %s: %s: %s", kind, type(error).__name__, error)

    return app
