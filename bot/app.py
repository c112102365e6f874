"""The Bolt app: Slack events, clicks, dialogs and /chatops, each acknowledged at once and handed on."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from .cards import (
    APPROVE_ACTION,
    EDIT_ACTION,
    EDIT_CALLBACK,
    REJECT_ACTION,
    REJECT_CALLBACK,
    SELECT_ACTION,
    MalformedCard,
    parse_edit_metadata,
    parse_reason,
)
from .commands import Commands
from .settings import BotSettings
from .slack_runs import SlackRuns

log = logging.getLogger(__name__)

def build_app(settings: BotSettings, client: AsyncWebClient, slack_runs: SlackRuns, commands: Commands) -> AsyncApp:
    app = AsyncApp(
        client=client,
        signing_secret=settings.signing_secret or "",
        request_verification_enabled=not settings.socket_mode,
        process_before_response=False,
    )

    async def ask_from_event(event: dict[str, Any], body: dict[str, Any]) -> None:
        event_id = body.get("event_id")
        if event_id and not await slack_runs.store.first_delivery(event_id):
            log.info("ignored a repeated delivery of event %s (retry %s)", event_id, body.get("retry_num", "?"))
            return
        slack_runs.spawn(
            slack_runs.ask(
                channel=event["channel"], user=event["user"], text=event.get("text", ""),
                message_ts=event["ts"], thread_ts=event.get("thread_ts"),
            ),
            f"ask {event_id}",
        )

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], body: dict[str, Any]) -> None:
        await ask_from_event(event, body)

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any]) -> None:
        # Channel messages that mention the bot arrive as app_mention too; only DMs start runs here.
        if event.get("channel_type") == "im" and not event.get("subtype") and not event.get("bot_id") and event.get("user"):
            await ask_from_event(event, body)

    @app.action(re.compile(f"^{SELECT_ACTION}_\\d+$"))
    async def on_tick(ack: AsyncAck) -> None:
        await ack()  # ticks live in the card's state until a button is clicked

    @app.action(APPROVE_ACTION)
    async def on_approve(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        slack_runs.spawn(
            slack_runs.decide(
                action_id=action["action_id"], value=action.get("value"), user=body["user"]["id"],
                channel=body["container"]["channel_id"], card_ts=body["container"].get("message_ts"),
                state_values=(body.get("state") or {}).get("values"),
            ),
            f"approve {action.get('value')}",
        )

    @app.action(EDIT_ACTION)
    @app.action(REJECT_ACTION)
    async def on_dialog_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        # Not spawned: the trigger id expires 3 s after the click.
        opener = slack_runs.open_editor if action["action_id"] == EDIT_ACTION else slack_runs.open_rejector
        await opener(
            value=action.get("value"), user=body["user"]["id"], channel=body["container"]["channel_id"],
            card_ts=body["container"]["message_ts"], trigger_id=body["trigger_id"],
        )

    @app.view(EDIT_CALLBACK)
    async def on_edit_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        try:
            ref, channel, card_ts = parse_edit_metadata(view)
        except MalformedCard as exc:
            log.warning("refused an edit dialog submission: %s", exc)
            await ack()
            return
        user = body["user"]["id"]
        decisions, errors = await slack_runs.check_edit(ref, user, (view.get("state") or {}).get("values"))
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        slack_runs.spawn(slack_runs.submit_edit(ref, decisions, user, channel, card_ts), f"edit {ref.value}")

    @app.view(REJECT_CALLBACK)
    async def on_reject_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        await ack()
        try:
            ref, channel, card_ts = parse_edit_metadata(view)
        except MalformedCard as exc:
            log.warning("refused a reject dialog submission: %s", exc)
            return
        reason = parse_reason((view.get("state") or {}).get("values"))
        slack_runs.spawn(slack_runs.veto(ref, reason, body["user"]["id"], channel, card_ts), f"reject {ref.value}")

    @app.command("/chatops")
    async def on_command(ack: AsyncAck, command: dict[str, Any]) -> None:
        answer, work = await commands.handle(command)
        await ack(text=answer) if answer else await ack()
        if work is not None:
            slack_runs.spawn(work, f"/chatops {command.get('text', '')[:40]}")

    @app.error
    async def on_error(error: Exception, body: dict[str, Any] | None = None) -> None:
        kind = (body or {}).get("type") or (body or {}).get("command") or "request"
        log.error("could not handle a Slack %s: %s: %s", kind, type(error).__name__, error)

    return app
