"""Socket Mode: the local Slack's apps.connections.open and WebSocket links (raw, and with Bolt's own handler in
process), then the real bot process in Socket Mode end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from sandbox.processes import BotProcess
from sandbox.slack import LocalSlack

from .bot_support import (
    APPROVER,
    OPS,
    REQUESTER,
    SECRET,
    TASK,
    all_text,
    bot_env,
    header_of,
    mention,
    script_three_calls,
)

APP_TOKEN = "xapp-test"
BOT_TOKEN = "xoxb-test"
MODAL = {
    "type": "modal",
    "callback_id": "reason",
    "title": {"type": "plain_text", "text": "Why?"},
    "submit": {"type": "plain_text", "text": "Send"},
    "blocks": [
        {
            "type": "input",
            "block_id": "why",
            "label": {"type": "plain_text", "text": "Reason"},
            "element": {"type": "plain_text_input", "action_id": "text"},
        }
    ],
}


def links_opened(slack: LocalSlack) -> int:
    return len(slack.log.entries(kind="socket", method="connection.open"))


async def open_link(slack: LocalSlack, token: str = APP_TOKEN) -> str:
    response = await AsyncWebClient(base_url=slack.api_url).apps_connections_open(app_token=token)
    return str(response["url"])


# ---------------------------------------------------------------------- the protocol, without the bot


async def test_apps_connections_open_takes_the_app_token_only() -> None:
    with LocalSlack(SECRET, app_token=APP_TOKEN) as slack:
        url = await open_link(slack)
        assert url.startswith(f"ws://127.0.0.1:{slack.port}/link/?ticket=") and url.endswith("&app_id=A0LOCAL")
        for token, error in ((BOT_TOKEN, "not_allowed_token_type"), ("xapp-wrong", "invalid_auth")):
            with pytest.raises(SlackApiError) as info:
                await open_link(slack, token)
            assert info.value.response["error"] == error
        with pytest.raises(SlackApiError) as info:
            await AsyncWebClient(token=APP_TOKEN, base_url=slack.api_url).auth_test()
        assert info.value.response["error"] == "not_allowed_token_type"
        assert [c["response"]["ok"] for c in slack.calls("apps.connections.open")] == [True, False, False]
    with LocalSlack(SECRET) as no_socket_mode:  # no app token configured: nobody gets a link
        with pytest.raises(SlackApiError) as info:
            await open_link(no_socket_mode)
        assert info.value.response["error"] == "invalid_auth"


async def test_envelopes_acks_timeouts_and_disconnect_on_a_raw_link() -> None:
    with LocalSlack(SECRET, app_token=APP_TOKEN, delivery_timeout=0.5) as slack:
        url = await open_link(slack)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                hello = await ws.receive_json(timeout=2)
                assert hello["type"] == "hello" and hello["num_connections"] == 1
                assert hello["connection_info"] == {"app_id": "A0LOCAL"} and slack.socket_connections == 1

                # A slash command: the ack's payload is the answer, recorded as the caller's ephemeral.
                pending = asyncio.create_task(slack.slash_command(REQUESTER, OPS, "/ops", "status"))
                envelope = await ws.receive_json(timeout=2)
                assert set(envelope) == {"envelope_id", "type", "payload", "accepts_response_payload"}
                assert envelope["type"] == "slash_commands" and envelope["accepts_response_payload"] is True
                assert envelope["payload"]["command"] == "/ops" and envelope["payload"]["text"] == "status"
                await ws.send_json({"envelope_id": envelope["envelope_id"], "payload": {"text": "all green"}})
                delivery = await pending
                assert (delivery.transport, delivery.status, delivery.json) == ("socket", 200, {"text": "all green"})
                assert delivery.notes == ["ack recorded as ephemeral"]
                assert [e["text"] for e in slack.ephemerals(REQUESTER)] == ["all green"]

                # An event carries the retry fields; one nobody acks times out, as an HTTP delivery would.
                pending_events = asyncio.create_task(slack.post_user_message(REQUESTER, OPS, "hello"))
                envelope = await ws.receive_json(timeout=2)
                assert envelope["type"] == "events_api" and envelope["accepts_response_payload"] is False
                assert (envelope["retry_attempt"], envelope["retry_reason"]) == (0, "")
                assert envelope["payload"]["type"] == "event_callback"
                assert envelope["payload"]["event"]["text"] == "hello"
                [late] = await pending_events
                assert (late.status, late.error, late.transport) == (0, "ack_timeout", "socket")
                await ws.send_json({"envelope_id": envelope["envelope_id"]})  # too late: logged, ignored

                # A redelivery says which attempt it is.
                pending = asyncio.create_task(slack.deliver_event(late.request, retry_num=1, retry_reason="timeout"))
                envelope = await ws.receive_json(timeout=2)
                assert (envelope["retry_attempt"], envelope["retry_reason"]) == (1, "timeout")
                await ws.send_json({"envelope_id": envelope["envelope_id"]})
                assert (await pending).status == 200

                assert await slack.send_socket_disconnect("warning") == 1
                disconnect = await ws.receive_json(timeout=2)
                assert (disconnect["type"], disconnect["reason"]) == ("disconnect", "warning")
            await slack.wait_for(lambda: slack.socket_connections == 0, timeout=3)

            # Tickets are single use; with no link, deliveries go back to signed HTTP (here: no bot_url at all).
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url)
            assert refused.value.status == 401
            with pytest.raises(RuntimeError, match="bot_url is not set"):
                await slack.slash_command(REQUESTER, OPS, "/ops")
            slack.socket_mode = True  # ...unless told to use Socket Mode: then the delivery waits for a link
            nobody = await slack.slash_command(REQUESTER, OPS, "/ops")
            assert (nobody.status, nobody.error) == (0, "no_socket_connection")

            # Stopping the local Slack closes its links.
            ws = await session.ws_connect(await open_link(slack))
            await ws.receive_json(timeout=2)
            await asyncio.to_thread(slack.stop)
            closing = await ws.receive(timeout=2)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.GOING_AWAY
            await ws.close()

        kinds = [(e["kind"], e["method"], e.get("transport")) for e in slack.log.entries() if e["kind"] != "api"]
        assert ("socket", "ack.unexpected", "socket") in kinds
        assert kinds.count(("delivery", "slash_command", "socket")) == 2  # the answered one and the unreachable one


@pytest.fixture
async def bolt_over_socket() -> AsyncIterator[tuple[LocalSlack, AsyncApp]]:
    """A real Bolt AsyncApp connected with Bolt's own AsyncSocketModeHandler, in this process."""
    with LocalSlack(SECRET, app_token=APP_TOKEN, socket_mode=True) as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
        app = AsyncApp(client=client, signing_secret="", request_verification_enabled=False)
        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()
        try:
            yield slack, app
        finally:
            await handler.close_async()


async def test_bolt_acks_carry_slash_answers_and_view_errors(bolt_over_socket: tuple[LocalSlack, AsyncApp]) -> None:
    slack, app = bolt_over_socket
    mentions: list[dict[str, Any]] = []

    @app.command("/ops")
    async def on_ops(ack: Any, command: dict[str, Any]) -> None:
        await ack(f"queued: {command['text']}")

    @app.view("reason")
    async def on_submit(ack: Any, view: dict[str, Any]) -> None:
        if len(view["state"]["values"]["why"]["text"]["value"] or "") < 5:
            await ack(response_action="errors", errors={"why": "Say a bit more"})
        else:
            await ack()

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any]) -> None:
        mentions.append(event)

    @app.event("message")
    async def on_message() -> None:
        pass

    command = await slack.slash_command(REQUESTER, OPS, "/ops", "restart api")
    # Bolt's ack(text) becomes the ack payload {"text": ...} (over HTTP it is a text/plain body).
    assert (command.status, command.json, command.headers) == (200, {"text": "queued: restart api"}, {})
    assert [e["text"] for e in slack.ephemerals(REQUESTER)] == ["queued: restart api"]

    client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
    view_id = (await client.views_open(trigger_id=slack.new_trigger(REQUESTER), view=MODAL))["view"]["id"]
    first = await slack.submit_view(REQUESTER, view_id, {"why": {"text": "no"}})
    assert first.json == {"response_action": "errors", "errors": {"why": "Say a bit more"}}
    assert slack.view(view_id)["is_open"] and slack.view(view_id)["errors"] == {"why": "Say a bit more"}
    second = await slack.submit_view(REQUESTER, view_id, {"why": {"text": "disk full"}})
    assert (second.status, second.body, second.notes) == (200, "", ["view closed"])
    assert not slack.view(view_id)["is_open"]

    deliveries = await slack.post_user_message(REQUESTER, OPS, "<@U0BOT> hi")
    assert [(d.kind, d.status, d.transport) for d in deliveries] == [
        ("message", 200, "socket"),
        ("app_mention", 200, "socket"),
    ]
    await slack.wait_for(lambda: mentions, timeout=5, description="the mention handled")

    # Slack recycles the link: Bolt's client asks for a new one and carries on.
    await slack.send_socket_disconnect()
    await slack.wait_for(
        lambda: links_opened(slack) == 2 and slack.socket_connections == 1,
        timeout=10,
        description="a new link, the old one closed",
    )
    again = await slack.slash_command(REQUESTER, OPS, "/ops", "again")
    assert again.json == {"text": "queued: again"}


# ---------------------------------------------------------------------- the real bot in Socket Mode


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    with LocalSlack(SECRET, app_token=APP_TOKEN, socket_mode=True) as local:
        yield local
        assert not local.unknown_calls, f"the bot called Web API methods Slack lacks: {local.unknown_calls}"


@pytest.fixture
async def bot(
    slack: LocalSlack, redis_url: str, model: Any, runbooks: Any, tmp_path: Path
) -> AsyncIterator[BotProcess]:
    env = bot_env(slack, redis_url, model.base_url, runbooks.dir, SLACK_APP_TOKEN=APP_TOKEN)
    del env["SLACK_SIGNING_SECRET"]  # Socket Mode needs none
    process = await asyncio.to_thread(BotProcess(env, tmp_path / "bot.log", socket_mode=True).start)
    try:
        await slack.wait_for(lambda: slack.socket_connections == 1, timeout=15, description="the bot's link")
        yield process
    finally:
        code = await asyncio.to_thread(process.stop)
        assert code == 0, f"the bot did not shut down cleanly:\n{process.log()[-3000:]}"
        assert "Traceback" not in process.log(), process.log()[-3000:]


async def test_the_bot_in_socket_mode_end_to_end(slack: LocalSlack, bot: BotProcess, model: Any, runbooks: Any) -> None:
    assert slack.bot_url is None  # nothing can reach the bot over HTTP: it all goes over the link
    async with aiohttp.ClientSession() as session:
        async with session.get(bot.health_url) as health:
            assert health.status == 200 and json.loads(await health.text()) == {"ok": True, "mode": "socket"}
        async with session.post(bot.url, json={"type": "url_verification", "challenge": "x"}) as events:
            assert events.status in (404, 405)

    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    assert f"<@{REQUESTER}> asked:\n{TASK}" in all_text(card)
    click = await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    assert (click.status, click.transport) == (200, "socket") and click.latency_ms < 3000

    done = await thread.wait_progress("Done")
    assert "Finished: disk usage is 42%." in all_text(done)
    assert len(runbooks.executions("disk-usage")) == 1 and len(runbooks.executions("record")) == 1
    assert [m["text"] for m in slack.messages(OPS) if m.get("user") == "U0BOT"] == ["Disk at 42%."]
    assert header_of(slack.message(OPS, card["ts"])) == "Approval decided"

    # Slack recycles the link; the bot reconnects and the slash command's ack still comes back.
    await slack.send_socket_disconnect()
    await slack.wait_for(
        lambda: links_opened(slack) == 2 and slack.socket_connections == 1,
        timeout=15,
        description="the bot's new link, the old one closed",
    )
    assert len(slack.calls("apps.connections.open")) == 2
    help_ack = await slack.slash_command(REQUESTER, OPS, "/chatops", "help")
    assert (help_ack.status, help_ack.transport) == (200, "socket")
    assert "/chatops run <task>" in help_ack.json["text"]
    assert "/chatops run <task>" in slack.ephemerals(REQUESTER)[-1]["text"]

    deliveries = slack.deliveries()
    assert deliveries and all(d["transport"] == "socket" and d["status"] == 200 for d in deliveries), deliveries
