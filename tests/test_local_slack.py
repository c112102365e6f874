"""Tests of the local Slack (sandbox.slack): the real AsyncWebClient on the Web API side, a real Bolt AsyncApp on the
delivery side, everything over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from sandbox.slack import LocalSlack

SECRET = "test-signing-secret"
TOKEN = "xoxb-test"
OPS = "C0OPS"
ALICE, BOB = "U0ALICE", "U0BOB"


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    with LocalSlack(SECRET, bot_token=TOKEN) as s:
        yield s


@pytest.fixture
def client(slack: LocalSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.api_url)


@pytest.fixture
async def bolt(slack: LocalSlack) -> AsyncIterator[AsyncApp]:
    """A real Bolt AsyncApp served by aiohttp on a free port; the local Slack delivers to it."""
    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=TOKEN, base_url=slack.api_url))
    runner = web.AppRunner(app.web_app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    slack.bot_url = f"http://127.0.0.1:{port}/slack/events"
    try:
        yield app
    finally:
        await runner.cleanup()


async def api_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await call
    return info.value


async def error_code(call: Any) -> str:
    """The ``error`` Slack answers a failing call with."""
    return (await api_error(call)).response["error"]


def checkbox_card(options: int = 3, initial: list[int] | None = None) -> list[dict[str, Any]]:
    opts = [{"text": {"type": "plain_text", "text": f"tool {i}"}, "value": f"t{i}"} for i in range(options)]
    element: dict[str, Any] = {"type": "checkboxes", "action_id": "pick", "options": opts}
    if initial:
        element["initial_options"] = [opts[i] for i in initial]
    return [
        {"type": "section", "block_id": "intro", "text": {"type": "mrkdwn", "text": "Approve these tool calls?"}},
        {"type": "actions", "block_id": "tools", "elements": [element]},
        {
            "type": "actions",
            "block_id": "decide",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approve",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": "run-42",
                    "style": "primary",
                },
            ],
        },
    ]


MODAL = {
    "type": "modal",
    "callback_id": "reason",
    "title": {"type": "plain_text", "text": "Why?"},
    "submit": {"type": "plain_text", "text": "Send"},
    "private_metadata": json.dumps({"run": "42"}),
    "blocks": [
        {
            "type": "input",
            "block_id": "why",
            "label": {"type": "plain_text", "text": "Reason"},
            "element": {"type": "plain_text_input", "action_id": "text"},
        },
        {
            "type": "input",
            "block_id": "env",
            "label": {"type": "plain_text", "text": "Env"},
            "element": {
                "type": "static_select",
                "action_id": "pick",
                "options": [
                    {"text": {"type": "plain_text", "text": "prod"}, "value": "prod"},
                    {"text": {"type": "plain_text", "text": "staging"}, "value": "staging"},
                ],
            },
        },
    ],
}


# ---------------------------------------------------------------------- Web API with the real AsyncWebClient


async def test_auth_post_update_thread_and_inspection(slack: LocalSlack, client: AsyncWebClient) -> None:
    auth = await client.auth_test()
    assert (auth["user_id"], auth["bot_id"], auth["team_id"]) == ("U0BOT", "B0BOT", "T0LOCAL")

    posted = await client.chat_postMessage(channel="#ops", text="working…")
    ts = posted["ts"]
    assert posted["channel"] == OPS and posted["message"]["bot_id"] == "B0BOT"
    await client.chat_update(channel=OPS, ts=ts, text="step 1/2")
    await client.chat_update(channel=OPS, ts=ts, text="done", blocks=checkbox_card())
    assert [v["text"] for v in slack.edit_history(OPS, ts)] == ["working…", "step 1/2", "done"]
    stored = slack.message(OPS, ts)
    assert stored is not None and stored["edited"] == 2 and stored["blocks"][1]["block_id"] == "tools"

    reply = await client.chat_postMessage(channel=OPS, text="in thread", thread_ts=ts)
    assert [m["text"] for m in slack.messages(OPS, thread_ts=ts)] == ["in thread"]
    assert [m["ts"] for m in slack.messages(OPS)] == [ts]
    replies = await client.conversations_replies(channel=OPS, ts=ts)
    assert [m["ts"] for m in replies["messages"]] == [ts, reply["ts"]]
    history = await client.conversations_history(channel=OPS)
    assert [m["ts"] for m in history["messages"]] == [ts] and history["messages"][0]["reply_count"] == 1

    link = await client.chat_getPermalink(channel=OPS, message_ts=reply["ts"])
    assert link["permalink"].startswith(f"{slack.url}archives/{OPS}/p{reply['ts'].replace('.', '')}")
    assert f"thread_ts={ts}" in link["permalink"]

    await client.reactions_add(channel=OPS, timestamp=ts, name="eyes")
    assert slack.message(OPS, ts)["reactions"] == {"eyes": ["U0BOT"]}  # type: ignore[index]
    assert await error_code(client.reactions_add(channel=OPS, timestamp=ts, name="eyes")) == "already_reacted"
    await client.reactions_remove(channel=OPS, timestamp=ts, name="eyes")

    assert (await client.users_info(user=ALICE))["user"]["is_admin"] is True
    slack.add_usergroup("S0SRE", "sre", [ALICE, BOB])
    assert (await client.usergroups_users_list(usergroup="S0SRE"))["users"] == [ALICE, BOB]
    assert (await client.conversations_info(channel=OPS))["channel"]["name"] == "ops"
    dm = (await client.conversations_open(users=BOB))["channel"]["id"]
    assert dm.startswith("D") and (await client.chat_postMessage(channel=dm, text="hi"))["channel"] == dm

    eph = await client.chat_postEphemeral(channel=OPS, user=BOB, text="only you")
    assert [e["text"] for e in slack.ephemerals(BOB)] == ["only you"]
    err = await api_error(client.chat_update(channel=OPS, ts=eph["message_ts"], text="x"))
    assert err.response["error"] == "cant_update_message"
    err = await api_error(client.chat_update(channel=OPS, ts="1.000001", text="x"))
    assert err.response["error"] == "message_not_found"

    await client.chat_delete(channel=OPS, ts=reply["ts"])
    assert slack.messages(OPS, thread_ts=ts) == []

    # The call log records every call with the token redacted; nothing unimplemented was called.
    calls = slack.calls("chat.update")
    assert [c["response"]["ok"] for c in calls] == [True, True, False, False] and calls[0]["params"]["ts"] == ts
    assert all("xoxb" not in json.dumps(c) for c in slack.calls())
    assert slack.unknown_calls == []


async def test_views_open_needs_fresh_trigger(slack: LocalSlack, client: AsyncWebClient) -> None:
    trigger = slack.new_trigger(ALICE)
    opened = (await client.views_open(trigger_id=trigger, view=MODAL))["view"]
    assert opened["id"].startswith("V") and opened["hash"] and opened["callback_id"] == "reason"
    assert [r["view"]["id"] for r in slack.views(ALICE, open_only=True)] == [opened["id"]]
    # A trigger is single-use.
    assert await error_code(client.views_open(trigger_id=trigger, view=MODAL)) == "trigger_exchanged"

    old = slack.new_trigger(ALICE)
    slack.age_trigger(old, 3.5)
    assert await error_code(client.views_open(trigger_id=old, view=MODAL)) == "expired_trigger_id"
    assert await error_code(client.views_open(trigger_id="123.456.abc", view=MODAL)) == "invalid_trigger_id"

    updated = await client.views_update(
        view_id=opened["id"], hash=opened["hash"], view={**MODAL, "title": {"type": "plain_text", "text": "Why now?"}}
    )
    assert updated["view"]["title"]["text"] == "Why now?"
    assert (
        await error_code(client.views_update(view_id=opened["id"], hash=opened["hash"], view=MODAL)) == "hash_conflict"
    )
    long_title = {**MODAL, "title": {"type": "plain_text", "text": "x" * 25}}
    err = await api_error(client.views_open(trigger_id=slack.new_trigger(ALICE), view=long_title))
    assert err.response["error"] == "invalid_blocks"
    assert "/view/title/text" in err.response["response_metadata"]["messages"][0]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_block_kit_limits(slack: LocalSlack, client: AsyncWebClient) -> None:
    divider = {"type": "divider"}
    err = await api_error(client.chat_postMessage(channel=OPS, text="x", blocks=[divider] * 51))
    assert err.response["error"] == "invalid_blocks"
    assert (await client.chat_postMessage(channel=OPS, text="x", blocks=[divider] * 50))["ok"]

    err = await api_error(client.chat_postMessage(channel=OPS, text="x", blocks=checkbox_card(options=11)))
    assert err.response["error"] == "invalid_blocks"
    assert err.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 11 items [json-pointer:/blocks/1/elements/0/options]"
    ]
    dup = [*checkbox_card(), {"type": "divider", "block_id": "tools"}]
    assert await error_code(client.chat_postMessage(channel=OPS, text="x", blocks=dup)) == "invalid_blocks"
    long_section = [{"type": "section", "text": {"type": "mrkdwn", "text": "a" * 3001}}]
    assert await error_code(client.chat_postMessage(channel=OPS, text="x", blocks=long_section)) == "invalid_blocks"

    assert await error_code(client.chat_postMessage(channel=OPS, text="a" * 40_001)) == "msg_too_long"
    assert await error_code(client.chat_postMessage(channel=OPS, text="")) == "no_text"
    assert await error_code(client.chat_postMessage(channel="C0NOPE", text="x")) == "channel_not_found"
    ts = (await client.chat_postMessage(channel=OPS, text="ok"))["ts"]
    assert (
        await error_code(client.chat_update(channel=OPS, ts=ts, text="x", blocks=checkbox_card(11))) == "invalid_blocks"
    )
    assert [m["text"] for m in slack.messages(OPS)][-1] == "ok"


async def test_unknown_method_and_bad_token(slack: LocalSlack, client: AsyncWebClient) -> None:
    err = await api_error(client.api_call("chat.scheduleMessage", json={"channel": OPS, "text": "later"}))
    assert err.response.status_code == 200 and err.response["error"] == "unknown_method"
    assert [c["method"] for c in slack.unknown_calls] == ["chat.scheduleMessage"]

    bad = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    assert await error_code(bad.auth_test()) == "invalid_auth"
    anonymous = AsyncWebClient(base_url=slack.api_url)
    assert await error_code(anonymous.chat_postMessage(channel=OPS, text="x")) == "not_authed"
    assert slack.messages(OPS) == []


async def test_injected_faults(slack: LocalSlack, client: AsyncWebClient) -> None:
    slack.inject_fault("chat.postMessage", status=429, retry_after=7)
    err = await api_error(client.chat_postMessage(channel=OPS, text="x"))
    assert err.response.status_code == 429
    assert err.response.headers["Retry-After"] == "7" and err.response["error"] == "ratelimited"

    slack.inject_fault("*", status=500, times=1)
    err = await api_error(client.users_info(user=ALICE))
    assert err.response.status_code == 500
    # Faults are used up: the next calls go through.
    assert (await client.chat_postMessage(channel=OPS, text="x"))["ok"]
    assert [c["status"] for c in slack.calls()] == [429, 500, 200]


async def test_chat_update_rate_limit() -> None:
    with LocalSlack(SECRET, rate_limits={"chat.update": 5}) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_url)
        ts = (await client.chat_postMessage(channel=OPS, text="0"))["ts"]
        for i in range(5):
            await client.chat_update(channel=OPS, ts=ts, text=str(i + 1))
        err = await api_error(client.chat_update(channel=OPS, ts=ts, text="too many"))
        assert err.response.status_code == 429 and int(err.response.headers["Retry-After"]) >= 1
        assert slack.message(OPS, ts)["text"] == "5"  # type: ignore[index]
        assert slack.rate("chat.update") == 6 and slack.peak_rate("chat.update") == 6
        assert slack.rate("chat.postMessage") == 1  # other methods have their own budget


async def test_added_api_latency_delays_every_call() -> None:
    # Off by default; when set, every Web API call waits at least that long before it is handled (a lower bound
    # only: how much longer a loaded machine takes is not this test's business).
    with LocalSlack(SECRET) as plain:
        assert plain.api_latency_ms == 0
    with LocalSlack(SECRET, api_latency_ms=120) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_url)
        ts = (await client.chat_postMessage(channel=OPS, text="slow"))["ts"]
        await client.chat_getPermalink(channel=OPS, message_ts=ts)
        slack.api_latency_ms = 60  # settable while serving
        await client.chat_update(channel=OPS, ts=ts, text="slower")
        calls = slack.calls()
        assert [c["method"] for c in calls] == ["chat.postMessage", "chat.getPermalink", "chat.update"]
        assert [c["latency_ms"] >= floor for c, floor in zip(calls, (120, 120, 60), strict=True)] == [True] * 3
        assert slack.message(OPS, ts)["text"] == "slower"  # type: ignore[index]
        with pytest.raises(ValueError, match="api_latency_ms"):
            slack.api_latency_ms = -1


# ---------------------------------------------------------------------- delivery to a real Bolt app


async def test_mention_reaches_app_mention_listener(slack: LocalSlack, bolt: AsyncApp) -> None:
    seen: list[dict[str, Any]] = []

    @bolt.event("app_mention")
    async def on_mention(body: dict[str, Any], say: Any) -> None:
        seen.append(body)
        await say(text="on it", thread_ts=body["event"]["ts"])

    @bolt.event("message")
    async def on_message() -> None:
        pass

    deliveries = await slack.post_user_message(ALICE, "#ops", "<@U0BOT> restart api")
    assert [d.status for d in deliveries] == [200, 200]
    assert [d.request["event"]["type"] for d in deliveries] == ["message", "app_mention"]
    root = slack.messages(OPS)[0]
    assert root["user"] == ALICE and root["text"] == "<@U0BOT> restart api"

    replies = await slack.wait_for(lambda: slack.messages(OPS, thread_ts=root["ts"]))
    assert replies[0]["text"] == "on it" and replies[0]["bot_id"] == "B0BOT"
    event = seen[0]
    assert event["event_id"].startswith("Ev") and event["authorizations"][0]["user_id"] == "U0BOT"
    assert event["event"]["client_msg_id"] and event["event"]["channel"] == OPS

    # A Slack retry keeps event_id and adds the retry headers; Bolt acks it like any event (it does not dedupe).
    again = await slack.deliver_event(deliveries[1].request, retry_num=1, retry_reason="http_timeout")
    assert again.status == 200
    await slack.wait_for(lambda: len(seen) == 2)
    assert seen[1]["event_id"] == seen[0]["event_id"]

    # A DM is a message event with channel_type im, and no app_mention.
    dm = await slack.post_user_message(BOB, slack.dm_channel(BOB), "hello <@U0BOT>")
    assert len(dm) == 1 and dm[0].request["event"]["channel_type"] == "im"


async def test_button_click_carries_current_checkbox_ticks(
    slack: LocalSlack, bolt: AsyncApp, client: AsyncWebClient
) -> None:
    clicks: list[dict[str, Any]] = []

    @bolt.action("pick")
    async def on_tick(ack: Any) -> None:
        await ack()

    @bolt.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        clicks.append(body)
        await respond(replace_original=True, text="approved")

    ts = (await client.chat_postMessage(channel=OPS, text="approve?", blocks=checkbox_card(initial=[0])))["ts"]
    tick = await slack.toggle_checkbox(BOB, OPS, ts, "tools", "pick", "t2", checked=True)
    assert tick.status == 200
    assert tick.request["actions"][0]["selected_options"][1]["value"] == "t2"
    await slack.toggle_checkbox(BOB, OPS, ts, "tools", "pick", "t0", checked=False)

    click = await slack.click_button(BOB, OPS, ts, "approve")
    assert click.status == 200
    await slack.wait_for(lambda: clicks)
    body = clicks[0]
    assert body["user"]["id"] == BOB and body["actions"][0]["value"] == "run-42"
    assert body["container"] == {"type": "message", "message_ts": ts, "channel_id": OPS, "is_ephemeral": False}
    ticked = body["state"]["values"]["tools"]["pick"]["selected_options"]
    assert [o["value"] for o in ticked] == ["t2"]
    # Another person's ticks are their own: Alice still sees the initial option.
    assert slack.workspace.state_values(ALICE, OPS, ts)["tools"]["pick"]["selected_options"][0]["value"] == "t0"

    # respond(replace_original=True) went through the response_url and edited the card.
    await slack.wait_for(lambda: slack.message(OPS, ts)["text"] == "approved")  # type: ignore[index]


async def test_slash_command_ack_is_ephemeral(slack: LocalSlack, bolt: AsyncApp) -> None:
    @bolt.command("/ops")
    async def on_ops(ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack(f"queued: {command['text']}")
        await respond(text="started", response_type="in_channel")

    delivery = await slack.slash_command(ALICE, "#ops", "/ops", "restart api")
    # Bolt answers ack(text) with a text/plain body (JSON only when blocks or response_type are given).
    assert delivery.status == 200 and delivery.body == "queued: restart api"
    assert delivery.headers["Content-Type"].startswith("text/plain")
    assert [e["text"] for e in slack.ephemerals(ALICE)] == ["queued: restart api"]
    assert slack.ephemerals(ALICE)[0]["source"] == "slash_ack"
    await slack.wait_for(lambda: [m for m in slack.messages(OPS) if m["text"] == "started"])


async def test_view_submission_errors_then_close(slack: LocalSlack, bolt: AsyncApp, client: AsyncWebClient) -> None:
    @bolt.view("reason")
    async def on_submit(ack: Any, view: dict[str, Any]) -> None:
        values = view["state"]["values"]
        reason = values["why"]["text"]["value"] or ""
        if len(reason) < 5:
            await ack(response_action="errors", errors={"why": "Say a bit more"})
            return
        assert values["env"]["pick"]["selected_option"]["value"] == "prod"
        assert json.loads(view["private_metadata"]) == {"run": "42"}
        await ack()

    view_id = (await client.views_open(trigger_id=slack.new_trigger(ALICE), view=MODAL))["view"]["id"]
    first = await slack.submit_view(ALICE, view_id, {"why": {"text": "no"}, "env": {"pick": "prod"}})
    assert first.status == 200 and first.json["response_action"] == "errors"
    record = slack.view(view_id)
    assert record["is_open"] and record["errors"] == {"why": "Say a bit more"}

    second = await slack.submit_view(ALICE, view_id, {"why": {"text": "disk full"}, "env": {"pick": "prod"}})
    assert second.status == 200 and second.body == ""
    assert not slack.view(view_id)["is_open"] and slack.views(ALICE, open_only=True) == []


async def test_signatures_and_malformed_payloads(slack: LocalSlack, bolt: AsyncApp) -> None:
    @bolt.event("app_mention")
    async def on_mention() -> None:
        pass

    envelope = slack.event_envelope(
        {
            "type": "app_mention",
            "user": ALICE,
            "text": "<@U0BOT>",
            "channel": OPS,
            "ts": "1.000001",
            "event_ts": "1.000001",
        }
    )
    body = json.dumps(envelope)
    assert (await slack.deliver_raw(body)).status == 200
    assert (await slack.deliver_raw(body, sign=False)).status == 401
    assert (await slack.deliver_raw(body, headers={"X-Slack-Signature": "v0=" + "0" * 64})).status == 401
    stale = await slack.deliver_raw(body, timestamp=int(time.time()) - 600)
    assert stale.status == 401

    # Bolt parses the body before it checks anything: broken JSON is an unhandled exception -> 500 from aiohttp,
    # even when the request is not signed at all.
    assert (await slack.deliver_raw("{not json")).status == 500
    assert (await slack.deliver_raw("{not json", sign=False)).status == 500
    assert (await slack.deliver_raw("payload=%7Bnot+json")).status == 500
    # Well-formed JSON of the wrong shape crashes a Bolt matcher (IndexError on actions[0]) -> 500 from Bolt.
    empty = await slack.deliver_raw("payload=" + json.dumps({"type": "block_actions", "actions": []}))
    assert empty.status == 500
    # A well-formed payload nobody listens for is answered 404 ("unhandled request"): Slack shows the user an error.
    nobody = {"type": "block_actions", "actions": [{"type": "button", "action_id": "nobody", "block_id": "b"}]}
    assert (await slack.deliver_raw("payload=" + json.dumps(nobody))).status == 404
    # The bot stays up.
    assert (await slack.deliver_raw(body)).status == 200
    assert [d["status"] for d in slack.deliveries("raw")] == [200, 401, 401, 401, 500, 500, 500, 500, 404, 200]


async def test_view_response_actions_and_close(slack: LocalSlack, bolt: AsyncApp, client: AsyncWebClient) -> None:
    step_two = {
        **MODAL,
        "callback_id": "step2",
        "title": {"type": "plain_text", "text": "Step 2"},
        "notify_on_close": True,
    }
    closed: list[dict[str, Any]] = []

    @bolt.view("reason")
    async def on_submit(ack: Any, view: dict[str, Any]) -> None:
        if view["state"]["values"]["why"]["text"]["value"] == "push":
            await ack(response_action="push", view=step_two)
        else:
            await ack(response_action="update", view={**MODAL, "title": {"type": "plain_text", "text": "Updated"}})

    @bolt.view("step2")
    async def on_step_two(ack: Any) -> None:
        await ack(response_action="clear")

    @bolt.view_closed("step2")
    async def on_closed(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        closed.append(body)

    view_id = (await client.views_open(trigger_id=slack.new_trigger(BOB), view=MODAL))["view"]["id"]
    assert (await slack.submit_view(BOB, view_id, {"why": {"text": "again"}})).notes == ["view updated"]
    assert slack.view(view_id)["view"]["title"]["text"] == "Updated"

    await slack.submit_view(BOB, view_id, {"why": {"text": "push"}})
    stack = slack.views(BOB, open_only=True)
    assert [r["view"]["callback_id"] for r in stack] == ["reason", "step2"]
    assert stack[1]["view"]["previous_view_id"] == view_id and stack[1]["view"]["root_view_id"] == view_id

    await slack.submit_view(BOB, stack[1]["view"]["id"], {})
    assert slack.views(BOB, open_only=True) == []

    # Closing with the X: view_closed only for views that asked for it.
    first = (await client.views_open(trigger_id=slack.new_trigger(BOB), view=MODAL))["view"]["id"]
    assert await slack.close_view(BOB, first) is None
    second = (await client.views_open(trigger_id=slack.new_trigger(BOB), view=step_two))["view"]["id"]
    delivery = await slack.close_view(BOB, second)
    assert delivery is not None and delivery.status == 200
    await slack.wait_for(lambda: closed)
    assert closed[0]["type"] == "view_closed" and closed[0]["view"]["id"] == second


async def test_ephemeral_card_and_response_url_limits(
    slack: LocalSlack, bolt: AsyncApp, client: AsyncWebClient
) -> None:
    bodies: list[dict[str, Any]] = []

    @bolt.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        bodies.append(body)

    eph_ts = (await client.chat_postEphemeral(channel=OPS, user=BOB, text="approve?", blocks=checkbox_card()))[
        "message_ts"
    ]
    assert (await slack.click_button(BOB, OPS, eph_ts, "approve", block_id="decide")).status == 200
    await slack.wait_for(lambda: bodies)
    body = bodies[0]
    assert body["container"]["is_ephemeral"] is True and "message" not in body
    assert body["state"]["values"]["tools"]["pick"]["selected_options"] == []

    async with httpx.AsyncClient() as http:
        url = body["response_url"]
        assert (await http.post(url, json={"text": "x" * 40_001})).json()["error"] == "msg_too_long"
        ok = await http.post(url, json={"replace_original": True, "text": "approved"})
        assert ok.status_code == 200 and slack.ephemerals(BOB)[0]["text"] == "approved"
        for _ in range(3):
            assert (await http.post(url, json={"text": "more"})).status_code == 200
        used = await http.post(url, json={"text": "sixth"})
        assert used.status_code == 404 and used.json()["error"] == "used_url"
        assert [e["source"] for e in slack.ephemerals(BOB)].count("response_url") == 3


async def test_form_and_query_encodings(slack: LocalSlack) -> None:
    """What other clients send: a form body with JSON-in-a-string blocks, a GET with query params, token in body."""
    async with httpx.AsyncClient(base_url=slack.api_url) as http:
        posted = await http.post(
            "chat.postMessage",
            data={
                "token": TOKEN,
                "channel": "ops",
                "text": "form",
                "blocks": json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]),
            },
        )
        assert posted.json()["ok"] and slack.messages(OPS)[0]["blocks"][0]["text"]["text"] == "*hi*"
        got = await http.get(
            "conversations.history", params={"channel": OPS}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert [m["text"] for m in got.json()["messages"]] == ["form"]
        bad = await http.post("chat.postMessage", data={"token": TOKEN, "channel": OPS, "blocks": "[not json"})
        assert bad.json() == {"ok": False, "error": "invalid_blocks_format"}


async def test_wait_for_explains_timeouts(slack: LocalSlack) -> None:
    def nothing_posted() -> list[Any]:
        return slack.messages(OPS)

    with pytest.raises(TimeoutError, match="nothing_posted"):
        await slack.wait_for(nothing_posted, timeout=0.1)


def test_command_line_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.slack", "--signing-secret", SECRET, "--bot-token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        api_url = line.split("SLACK_API_URL=")[1].split(")")[0]
        auth = httpx.post(f"{api_url}auth.test", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert auth["ok"] and auth["user_id"] == "U0BOT"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
