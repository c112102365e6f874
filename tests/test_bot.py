"""The Slack bot end to end: the real bot process over real HTTP with signed requests, a local Slack,
the scripted model and real Redis. Assertions are on what people see in Slack."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import pytest

from sandbox.slack import LocalSlack

from .bot_support import (
    APPROVER,
    OPS,
    OTHER,
    REQUESTER,
    TASK,
    all_text,
    bot_env,
    checkbox_block,
    header_of,
    mention,
    script_three_calls,
    start_bot,
)


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir)


@pytest.fixture
def bot(slack, env, tmp_path):
    process = start_bot(slack, env, tmp_path / "bot.log")
    yield process
    assert process.stop() == 0, "the bot did not shut down cleanly"
    assert "Traceback" not in process.log(), process.log()[-3000:]


async def test_approver_ticks_two_of_three_calls_and_only_those_run(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)

    card = await thread.wait_card()
    text = all_text(card)
    assert f"<@{REQUESTER}> asked:\n{TASK}" in text
    assert "run_runbook" in text and "disk-usage" in text and "post_message" in text
    assert [e["action_id"] for e in card["blocks"][-2]["elements"]] == ["approve", "reject", "edit"]
    # No edit repeats what the card right below says: the progress message still says it works (and that
    # anything needing approval gets a card below).
    progress = thread.progress()
    assert progress is not None and "Working" in all_text(progress) and "approval card first" in all_text(progress)

    await slack.toggle_checkbox(APPROVER, OPS, card["ts"], *checkbox_block(card, "1"), "1", checked=False)
    click = await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    assert click.status == 200 and click.latency_ms < 3000

    done = await thread.wait_progress("Done")
    assert "Finished: disk usage is 42%." in all_text(done)
    assert len(runbooks.executions("disk-usage")) == 1
    assert runbooks.executions("record") == []
    assert [m["text"] for m in slack.messages(OPS) if m.get("user") == "U0BOT"] == ["Disk at 42%."]
    decided = await thread.wait_decided(card["ts"])
    assert header_of(decided) == "Approval decided"
    decided_text = all_text(decided)
    assert "1. run_runbook — ✅ approved\nname: disk-usage" in decided_text
    assert "2. run_runbook — ⛔ rejected (not ticked by the approver)\nname: record" in decided_text
    assert f"<@{APPROVER}>" in decided_text and "2 of 3 calls allowed to run" in decided_text
    assert not any(b.get("type") == "actions" for b in decided["blocks"])  # buttons gone
    assert "record — rejected" in all_text(done) or "rejected" in all_text(done)


async def test_reject_runs_nothing_and_says_so(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "reject")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the reject dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    asked = len(model.requests)
    submitted = await slack.submit_view(APPROVER, view["id"], {"reason": {"reason": "wrong runbook for prod"}})
    assert submitted.status == 200 and not slack.views(APPROVER, open_only=True)
    ended = await thread.wait_progress("Nothing ran: every call was rejected")
    assert runbooks.executions() == []
    assert [m for m in slack.messages(OPS) if m.get("user") == "U0BOT"] == []
    decided = all_text(await thread.wait_decided(card["ts"]))
    assert "0 of 3 calls allowed to run" in decided and "(wrong runbook for prod)" in decided
    assert "rejected by" in all_text(ended) and "(wrong runbook for prod)" in all_text(ended)
    # The run ended there: the model was not asked to re-plan (the dialog offers that, unticked by default).
    assert len(model.requests) == asked


async def test_the_requester_cannot_approve_their_own_run(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(REQUESTER, OPS, card["ts"], "approve")
    await slack.wait_for(lambda: slack.ephemerals(REQUESTER), timeout=10, description="a refusal for the requester")
    assert "someone else has to approve" in slack.ephemerals(REQUESTER)[-1]["text"]
    await asyncio.sleep(0.5)
    assert header_of(slack.message(OPS, card["ts"])) == "Approval needed"
    assert runbooks.executions() == []


async def test_only_listed_approvers_may_decide(slack, env, model, runbooks, tmp_path):
    slack.add_usergroup("S0SRE", "sre", [OTHER])
    process = start_bot(slack, {**env, "CHATOPS_APPROVERS": f"{APPROVER} S0SRE"}, tmp_path / "bot.log")
    try:
        script_three_calls(model)
        thread = await mention(slack, TASK)
        card = await thread.wait_card()
        outsider = "U0DAVE"
        slack.add_user(outsider, "dave")
        await slack.click_button(outsider, OPS, card["ts"], "approve")
        await slack.wait_for(lambda: slack.ephemerals(outsider), timeout=10, description="a refusal")
        refusal = slack.ephemerals(outsider)[-1]["text"]
        assert f"Only <@{APPROVER}> or the @sre group can approve this card" in refusal, refusal
        assert runbooks.executions() == []
        # A member of the approvers' user group may.
        await slack.click_button(OTHER, OPS, card["ts"], "approve")
        await thread.wait_progress("Done")
        assert len(runbooks.executions()) == 2
    finally:
        process.stop()


async def test_a_stale_card_is_refused_to_the_clicker_only(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    # Another approver's client still shows the old card and they click Approve on it.
    old_value = next(
        e["value"]
        for b in card["blocks"]
        if b.get("type") == "actions"
        for e in b["elements"]
        if e.get("action_id") == "approve"
    )
    click = await deliver_click(slack, OTHER, card, "approve", old_value)
    assert click.status == 200
    await slack.wait_for(lambda: slack.ephemerals(OTHER), timeout=10, description="a refusal of a stale click")
    assert "no longer current" in slack.ephemerals(OTHER)[-1]["text"]
    assert len(runbooks.executions("disk-usage")) == 1


async def deliver_click(slack: LocalSlack, user: str, card: dict, action_id: str, value: str):
    """A block_actions payload for a card as it looked before (Slack clients can hold an old copy)."""

    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0LOCAL"},
        "api_app_id": "A0LOCAL",
        "token": "local-verification-token",
        "container": {"type": "message", "message_ts": card["ts"], "channel_id": OPS, "is_ephemeral": False},
        "trigger_id": slack.new_trigger(user),
        "team": {"id": "T0LOCAL", "domain": "local"},
        "channel": {"id": OPS, "name": "ops"},
        "message": card,
        "state": {"values": {}},
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "x",
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload)})
    return await slack.deliver_raw(body, {"Content-Type": "application/x-www-form-urlencoded"})


async def test_edit_dialog_shows_field_errors_then_runs_the_edited_call(slack, bot, model, runbooks):
    alerts = slack.add_channel("ops-alerts")
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "edit")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the edit dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    labels = [b["label"]["text"] for b in view["blocks"] if b.get("type") == "input"]
    assert labels[:2] == ["1. run_runbook", "name"] and "channel" in labels and "text" in labels

    # Invalid: the channel cleared (required) and a malformed runbook name kept as is.
    bad = await slack.submit_view(APPROVER, view["id"], {"arg_2_channel": {"arg_2_channel": ""}})
    assert bad.status == 200 and bad.json["response_action"] == "errors"
    assert "arg_2_channel" in bad.json["errors"]
    assert slack.views(APPROVER, open_only=True), "the dialog stays open with its errors"
    assert runbooks.executions() == []

    # Valid: untick the recording runbook, send the post to another channel.
    good = await slack.submit_view(
        APPROVER,
        view["id"],
        {
            "include_1": {"include_1": []},
            "arg_2_channel": {"arg_2_channel": "#ops-alerts"},
            "arg_2_text": {"arg_2_text": "edited"},
        },
    )
    assert good.status == 200 and not good.body
    await thread.wait_progress("Done")
    assert len(runbooks.executions("disk-usage")) == 1 and runbooks.executions("record") == []
    assert [m["text"] for m in slack.messages(alerts)] == ["edited"]
    decided = all_text(await thread.wait_decided(card["ts"]))
    assert "3. post_message — ✏️ edited, now runs with:\nchannel: #ops-alerts\ntext: edited" in decided
    assert "2. run_runbook — ⛔ rejected (unticked in the edit dialog)\nname: record" in decided


async def test_a_double_click_runs_the_calls_once(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    clicks = await asyncio.gather(*(slack.click_button(APPROVER, OPS, card["ts"], "approve") for _ in range(2)))
    assert [c.status for c in clicks] == [200, 200]
    await thread.wait_progress("Done")
    await asyncio.sleep(1)
    assert len(runbooks.executions("disk-usage")) == 1 and len(runbooks.executions("record")) == 1
    assert len([m for m in slack.messages(OPS) if m.get("user") == "U0BOT"]) == 1


async def test_two_bot_replicas_clicked_at_once_resume_once(slack, env, bot, model, runbooks, tmp_path):
    """Two replicas behind a load balancer: each receives one of two approvers' clicks."""
    second = start_bot(slack, env, tmp_path / "bot2.log")
    try:
        script_three_calls(model)
        slack.bot_url = bot.url
        thread = await mention(slack, TASK)
        card = await thread.wait_card()
        first_url, second_url = bot.url, second.url

        async def click_via(url: str, user: str):
            slack.bot_url = url
            return await slack.click_button(user, OPS, card["ts"], "approve")

        # Build both requests before either is sent, then fire them together.
        slack.bot_url = first_url
        results = await asyncio.gather(click_via(first_url, APPROVER), click_via(second_url, OTHER))
        assert [r.status for r in results] == [200, 200]
        await thread.wait_progress("Done")
        await asyncio.sleep(1)
        assert len(runbooks.executions("disk-usage")) == 1 and len(runbooks.executions("record")) == 1
        refused = slack.ephemerals(APPROVER) + slack.ephemerals(OTHER)
        assert len(refused) == 1 and (
            "deciding this card" in refused[0]["text"] or "no longer current" in refused[0]["text"]
        )
    finally:
        second.stop()


async def test_a_repeated_event_delivery_starts_one_run(slack, bot, model, runbooks):
    script_three_calls(model)
    deliveries = await slack.post_user_message(REQUESTER, OPS, f"<@U0BOT> {TASK}")
    envelope = next(d.request for d in deliveries if d.request["event"]["type"] == "app_mention")
    retries = await asyncio.gather(
        *(slack.deliver_event(envelope, retry_num=n, retry_reason="http_timeout") for n in (1, 2, 3))
    )
    assert all(r.status == 200 for r in retries)
    root = [m for m in slack.messages(OPS) if m.get("user") == REQUESTER][-1]
    await slack.wait_for(
        lambda: any(header_of(m) == "Approval needed" for m in slack.messages(OPS, root["ts"])), timeout=20
    )
    await asyncio.sleep(1)
    bot_replies = [m for m in slack.messages(OPS, root["ts"]) if m.get("user") == "U0BOT"]
    assert len(bot_replies) == 2  # one progress message, one card
    assert len(model.requests) == 1


async def test_the_bot_restarted_while_a_card_is_pending_still_approves(slack, env, model, runbooks, tmp_path):
    script_three_calls(model)
    first = start_bot(slack, env, tmp_path / "bot.log")
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    first.kill()  # a crash, not a clean stop
    second = start_bot(slack, env, tmp_path / "bot2.log")
    try:
        await slack.click_button(APPROVER, OPS, card["ts"], "approve")
        # If the crash left the thread's lock behind, the click waits for it to expire (15 s) and goes on.
        done = await thread.wait_progress("Done", timeout=45)
        assert "Finished" in all_text(done)
        assert len(runbooks.executions("disk-usage")) == 1
        # Even if the crash came before the first bot noted where the card is, the click says where it is.
        await slack.wait_for(lambda: header_of(slack.message(OPS, card["ts"])) == "Approval decided", timeout=10)
    finally:
        second.stop()


async def test_a_new_mention_in_a_paused_thread_says_so(slack, bot, model, runbooks):
    script_three_calls(model)
    thread = await mention(slack, TASK)
    await thread.wait_card()
    await slack.post_user_message(OTHER, OPS, "<@U0BOT> also restart the web server", thread_ts=thread.ts)
    await slack.wait_for(
        lambda: any("waiting for approval on the card above" in m.get("text", "") for m in thread.replies()),
        timeout=10,
        description="a note that the run is paused",
    )
    assert len(model.requests) == 1


async def test_chatops_run_and_dm_start_runs(slack, bot, model, runbooks):
    script_three_calls(model)
    ack = await slack.slash_command(REQUESTER, OPS, "/chatops", f"run {TASK}")
    assert ack.status == 200
    await slack.wait_for(
        lambda: any(m.get("text", "").endswith(f"asked: {TASK}") for m in slack.messages(OPS)), timeout=10
    )
    root = [m for m in slack.messages(OPS) if m.get("text", "").endswith(f"asked: {TASK}")][-1]
    await slack.wait_for(
        lambda: any(header_of(m) == "Approval needed" for m in slack.messages(OPS, root["ts"])), timeout=20
    )

    dm = slack.dm_channel(OTHER)
    await slack.post_user_message(OTHER, dm, TASK)
    await slack.wait_for(
        lambda: any(header_of(m) == "Approval needed" for m in slack.messages(dm, slack.messages(dm)[0]["ts"])),
        timeout=20,
        description="a card in the DM thread",
    )
    help_ack = await slack.slash_command(REQUESTER, OPS, "/chatops", "help")
    assert "/chatops run <task>" in help_ack.body


async def test_bad_signatures_and_malformed_payloads_are_refused_without_harm(slack, bot, model, runbooks):
    body = json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {"type": "app_mention"}})
    forged = await slack.deliver_raw(
        body, {"Content-Type": "application/json", "X-Slack-Signature": "v0=bad"}, sign=False
    )
    assert forged.status == 401
    stale = await slack.deliver_raw(body, {"Content-Type": "application/json"}, timestamp=int(time.time()) - 600)
    assert stale.status == 401
    broken_json = await slack.deliver_raw("{not json", {"Content-Type": "application/json"})
    assert broken_json.status == 400
    broken_payload = await slack.deliver_raw("payload=%7Bnope", {"Content-Type": "application/x-www-form-urlencoded"})
    assert broken_payload.status == 400
    no_actions = urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": APPROVER}, "actions": []})})
    empty = await slack.deliver_raw(no_actions, {"Content-Type": "application/x-www-form-urlencoded"})
    assert empty.status in (400, 404)
    forged_value = await deliver_click(slack, APPROVER, {"ts": "1.2", "blocks": []}, "approve", "../../etc")
    assert forged_value.status == 200
    await slack.wait_for(lambda: slack.ephemerals(APPROVER), timeout=10)
    assert "not one of mine" in slack.ephemerals(APPROVER)[-1]["text"]
    unknown_run = await deliver_click(slack, APPROVER, {"ts": "1.2", "blocks": []}, "approve", "zzzz9999:abc123")
    assert unknown_run.status == 200
    await slack.wait_for(lambda: len(slack.ephemerals(APPROVER)) >= 2, timeout=10)
    assert "no run `zzzz9999`" in slack.ephemerals(APPROVER)[-1]["text"]
    # The bot is still healthy and serving, and said why it refused.
    script_three_calls(model)
    thread = await mention(slack, TASK)
    await thread.wait_card()
    assert "refused a malformed Slack request" in bot.log()


async def test_a_429_storm_on_chat_update_still_delivers_every_final_state(slack, bot, model, runbooks):
    script_three_calls(model)
    slack.inject_fault("chat.update", status=429, retry_after=1, times=6)
    thread = await mention(slack, TASK)
    card = await thread.wait_card(timeout=30)
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    done = await thread.wait_progress("Done", timeout=60)

    assert "Finished: disk usage is 42%." in all_text(done)
    await thread.wait_decided(card["ts"])
    updates = slack.calls("chat.update")
    limited = [c for c in updates if c.get("status") == 429]
    assert len(limited) == 6
    for hit in limited:
        # Retry-After was honoured by the scheduler: the next edit came a second later, not at once.
        later = [c for c in updates if c["seq"] > hit["seq"]]
        assert not later or later[0]["time"] - hit["time"] >= 0.9
    assert slack.peak_rate("chat.update") <= 45


async def test_a_run_cut_off_by_a_crash_carries_on_after_a_restart_without_rerunning_the_tool(
    slack, env, model, runbooks, tmp_path
):
    from sandbox.openai_server import rule

    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "slow"}}]}, has_tool_results=False),
            rule({"text": "Finished after the restart."}, has_tool_results=True),
        ]
    )
    first = start_bot(slack, env, tmp_path / "bot.log")
    thread = await mention(slack, "run the slow runbook")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("— running")
    first.kill()  # mid-tool: the runbook was started, its result never recorded
    second = start_bot(slack, env, tmp_path / "bot2.log")
    try:
        # The dead replica's lock expires (15 s); the new one's sweeper picks the run up from its checkpoint.
        done = await thread.wait_progress("Finished after the restart.", timeout=60)
        text = all_text(done)
        assert "picked up again after a restart" in text
        assert "outcome was not recorded" in text  # reported, not run a second time
        await asyncio.sleep(3.5)  # the first runbook process finishes on its own
        assert len(runbooks.executions("slow")) == 1
    finally:
        assert second.stop() == 0
        assert "Traceback" not in second.log()
