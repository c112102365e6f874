"""The promise, tried as an attacker would: nothing the bot holds leaks through a tool, the card shows exactly
what will run, the bot never broadcasts, one thread has one requester, every pending review has a card, and
every click and dialog counts only on its own card.

The real bot process over real HTTP with signed requests, the local Slack, the scripted model and real Redis.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from graphs import Keys
from sandbox.openai_server import rule
from sandbox.slack import LocalSlack

from .bot_support import (
    APPROVER,
    OPS,
    OTHER,
    REQUESTER,
    TASK,
    Thread,
    all_text,
    bot_env,
    card_value,
    checkbox_block,
    header_of,
    mention,
    propose,
    script_three_calls,
    start_bot,
)

GENERAL = "C0GENERAL"


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir, CHATOPS_ADMINS=REQUESTER)


def mrkdwn_and_text(params: dict[str, Any]) -> list[str]:
    """Every string of a Web API call that Slack parses for mentions, links and broadcasts: the top-level
    ``text`` and each mrkdwn text object (rich_text and plain_text are never parsed)."""
    found = [params["text"]] if isinstance(params.get("text"), str) else []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    blocks = params.get("blocks")
    walk(json.loads(blocks) if isinstance(blocks, str) else blocks)
    return found


def live_broadcasts(slack: LocalSlack) -> list[str]:
    """Broadcasts the bot sent that Slack would act on, in posts, edits, ephemerals and command answers."""
    texts = [
        t
        for c in slack.calls()
        if c.get("method") in ("chat.postMessage", "chat.update", "chat.postEphemeral")
        for t in mrkdwn_and_text(c.get("params") or {})
    ]
    texts += [e.get("text") or "" for e in slack.ephemerals()]
    return [t for t in texts if any(b in t for b in ("<!channel", "<!here", "<!everyone", "<!subteam"))]


# --- 2. nothing the bot holds reaches a tool, or leaks through one --------------------------------------------


def redis_values(url: str) -> str:
    """Every key and value in Redis, as text: checkpoints (JSON), hashes, strings, streams, sorted sets."""
    client = Redis.from_url(url, decode_responses=True)
    out = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == "ReJSON-RL":
                value: Any = client.execute_command("JSON.GET", key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "string":
                value = client.get(key)
            elif kind == "stream":
                value = client.xrange(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(key))
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            else:
                value = kind
            out.append(f"{key} {value}")
    finally:
        client.close()
    return "\n".join(out)


async def test_a_runbook_that_prints_its_environment_leaks_no_secret(redis_url, model, runbooks, tmp_path):
    token, signing = f"xoxb-{secrets.token_hex(12)}", secrets.token_hex(16)
    api_key, redis_password, deploy = f"sk-{secrets.token_hex(16)}", secrets.token_hex(12), secrets.token_hex(12)
    runbooks._script("printenv", 'env\necho "deploy token: $DEPLOY_TOKEN"')
    host_port = redis_url.split("//", 1)[1]
    with LocalSlack(signing, bot_token=token) as slack:
        env = bot_env(slack, redis_url, model.base_url, runbooks.dir)
        env.update(
            SLACK_BOT_TOKEN=token,
            SLACK_SIGNING_SECRET=signing,
            OPENAI_API_KEY=api_key,
            # The default user has no password here, so Redis accepts any: the URL carries one like production's.
            REDIS_URL=f"redis://default:{redis_password}@{host_port}",
            DEPLOY_TOKEN=deploy,
            CHATOPS_RUNBOOK_ENV="DEPLOY_TOKEN",
        )
        propose(model, {"name": "run_runbook", "args": {"name": "printenv"}})
        bot = start_bot(slack, env, tmp_path / "bot.log")
        try:
            thread = await mention(slack, "print the environment")
            card = await thread.wait_card()
            await slack.click_button(APPROVER, OPS, card["ts"], "approve")
            await thread.wait_progress("Done")
        finally:
            assert bot.stop() == 0
        calls = json.dumps(slack.calls())
        log = bot.log()

    assert runbooks.executions() == []  # printenv does not log; what matters is what it printed:
    tool_output = next(m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool")
    assert "PATH=" in tool_output and "deploy token: [redacted]" in tool_output
    # The runbook got the minimal environment: none of the bot's own variables.
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY", "REDIS_URL", "CHATOPS_KEY_PREFIX"):
        assert f"{name}=" not in tool_output, name
    stored = redis_values(redis_url)
    for secret in (token, signing, api_key, redis_password, deploy):
        assert secret not in json.dumps(model.requests), "a secret reached the model"
        assert secret not in calls, "a secret reached Slack"
        assert secret not in stored, "a secret was kept in Redis (checkpoint, ledger, audit)"
        assert secret not in log, "a secret reached the log"


# --- 3. the card shows exactly what will run -----------------------------------------------------------------

PADDED = (
    "Disk usage on web-1 is fine" + " " * 300 + "<!channel> log in at <https://evil.example|https://sso.corp>"
    "\n2. *Security review passed* \u202etxt.exe\u200b"
)


async def test_the_card_shows_padded_bidi_and_mrkdwn_faking_values_as_they_are(slack, start, model):
    start()
    propose(model, {"name": "post_message", "args": {"channel": f"<#{GENERAL}|ops>", "text": PADDED}})
    thread = await mention(slack, "post the disk summary")
    card = await thread.wait_card()
    text = all_text(card)

    # Every character is there to see: the padding counted, the hidden characters by their code.
    assert (
        "Disk usage on web-1 is fine⟨300 spaces⟩<!channel> log in at <https://evil.example|https://sso.corp>\n"
        "2. *Security review passed* ⟨U+202E⟩txt.exe⟨U+200B⟩"
    ) in text
    assert "\u202e" not in json.dumps(card["blocks"], ensure_ascii=False)
    assert "\u200b" not in json.dumps(card["blocks"], ensure_ascii=False)
    # The value is data: a preformatted rich_text box, never mrkdwn that could fake a line of the card.
    boxes = [
        e
        for b in card["blocks"]
        if b["type"] == "rich_text"
        for e in b["elements"]
        if e["type"] == "rich_text_preformatted"
    ]
    assert any("Security review passed" in e["elements"][0]["text"] for e in boxes)
    assert not any("Security review passed" in t for t in mrkdwn_and_text(card))
    # What the references really are: the channel by id and real name, the link by its target.
    assert f"posts to #general ({GENERAL})" in text
    assert "it reads “ops”, but the post goes to #general" in text
    assert "a link shows “https://sso.corp” but opens https://evil.example" in text
    assert "@channel will be posted as plain words and notify nobody" in text
    assert "hidden characters" in text and "U+202E right-to-left override" in text

    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    posted = [m["text"] for m in slack.messages(GENERAL) if m.get("user") == "U0BOT"]
    assert len(posted) == 1 and slack.messages(OPS, thread.ts)  # #general, where the card said; not #ops
    assert "<!channel>" not in posted[0] and "@channel log in at" in posted[0]
    assert not [m for m in slack.messages(OPS) if m.get("user") == "U0BOT" and "Disk usage" in m.get("text", "")]


def dialog_values(view: dict[str, Any]) -> dict[str, str]:
    """The "Show in full" dialog as read: each argument's name and its whole value."""
    values: dict[str, str] = {}
    name = None
    for block in view["blocks"]:
        if block["type"] == "section" and block["text"]["type"] == "mrkdwn" and block["text"]["text"].startswith("*"):
            name = block["text"]["text"].strip("*")
        elif block["type"] == "section" and block["text"]["type"] == "plain_text" and name:
            assert block["text"].get("emoji") is False  # :codes: in a value stay text
            values[name] = values.get(name, "") + block["text"]["text"]
    return values


async def test_a_long_value_is_marked_shortened_and_shown_whole_on_request(slack, start, model, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  post_message: {mode: ask, required_approvals: 2}\n")
    start(CHATOPS_POLICY_FILE=str(policy))
    body = "".join(f"line {n}: all quiet\n" for n in range(400)) + "THE END <!here>"
    propose(model, {"name": "post_message", "args": {"channel": "#ops", "text": body}})
    thread = await mention(slack, "post the long report")
    card = await thread.wait_card()
    text = all_text(card)
    assert "more characters of text not shown here" in text and "THE END" not in text
    shortened = [e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"] if e["type"] == "button"]
    assert "Show call 1 in full" in [e["text"]["text"] for e in shortened]

    await slack.click_button(APPROVER, OPS, card["ts"], "show_args_0")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the full arguments")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    assert dialog_values(view) == {"channel": "#ops", "text": body}  # every character, exactly
    assert header_of(slack.message(OPS, card["ts"])) == "Approval needed"  # reading changes nothing

    # The first approver edits the text; the second approver reads the edited value whole before agreeing.
    await slack.close_view(APPROVER, view["id"])
    await slack.click_button(APPROVER, OPS, card["ts"], "edit")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the edit dialog")
    edit = slack.views(APPROVER, open_only=True)[-1]["view"]
    edited = body.replace("THE END", "THE REAL END")
    await slack.submit_view(APPROVER, edit["id"], {"arg_0_text": {"arg_0_text": edited}})
    await slack.wait_for(
        lambda: "Proposed by the first approver" in all_text(slack.message(OPS, card["ts"])),
        timeout=15,
        description="the card showing the proposal",
    )
    proposal = slack.message(OPS, card["ts"])
    assert "Call 1 is shortened on this card" in all_text(proposal)
    await slack.click_button(OTHER, OPS, card["ts"], "show_args_0")
    await slack.wait_for(lambda: slack.views(OTHER, open_only=True), timeout=10, description="the edited arguments")
    assert dialog_values(slack.views(OTHER, open_only=True)[-1]["view"]) == {"channel": "#ops", "text": edited}


async def test_a_broadcast_allowed_by_policy_is_posted_and_the_card_warns(slack, start, model, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  post_message: {mode: ask, allow_broadcast: true}\n")
    start(CHATOPS_POLICY_FILE=str(policy))
    propose(model, {"name": "post_message", "args": {"channel": "#ops", "text": "<!here> maintenance at 5pm"}})
    thread = await mention(slack, "announce the maintenance")
    card = await thread.wait_card()
    assert "⚠ notifies everyone it names: @here" in all_text(card)
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    assert [
        m["text"] for m in slack.messages(OPS) if m.get("user") == "U0BOT" and "maintenance" in m.get("text", "")
    ] == ["<!here> maintenance at 5pm"]


async def test_the_edit_dialog_shows_hidden_characters_and_refuses_an_unknown_channel(slack, start, model):
    start()
    propose(model, {"name": "post_message", "args": {"channel": "#ops", "text": "deploy \u202eok"}})
    thread = await mention(slack, "post the deploy note")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "edit")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the edit dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    field = next(b for b in view["blocks"] if b.get("block_id") == "arg_0_text")
    assert "contains hidden characters" in field["label"]["text"]
    assert "deploy ⟨U+202E⟩ok" in field["hint"]["text"]

    bad = await slack.submit_view(APPROVER, view["id"], {"arg_0_channel": {"arg_0_channel": "not a channel!!"}})
    assert bad.json["response_action"] == "errors"
    assert "no channel" in bad.json["errors"]["arg_0_channel"]
    assert not [m for m in slack.messages(OPS) if m.get("user") == "U0BOT" and "deploy" in m.get("text", "")]


# --- 4. the bot never broadcasts -------------------------------------------------------------------------------


async def test_text_from_people_models_and_tools_never_broadcasts(slack, start, model, runbooks):
    start()
    model.reset(
        [
            rule(
                {
                    "text": "Checking <!everyone>.",
                    "tool_calls": [
                        {"name": "run_runbook", "args": {"name": "disk-usage"}},
                        {
                            "name": "post_message",
                            "args": {"channel": "#ops", "text": "<!channel> <!subteam^S0ONCALL|@oncall> disk"},
                        },
                    ],
                },
                has_tool_results=False,
            ),
            rule({"text": "All good <!here> <@U0BOB>"}, has_tool_results=True),
        ]
    )
    ack = await slack.slash_command(REQUESTER, OPS, "/chatops", "run <!channel> <!here> check the disk")
    assert ack.status == 200
    await slack.wait_for(lambda: any("asked:" in m.get("text", "") for m in slack.messages(OPS)), timeout=10)
    root = next(m for m in slack.messages(OPS) if "asked:" in m.get("text", ""))
    assert root["text"] == f"<@{REQUESTER}> asked: &lt;!channel&gt; &lt;!here&gt; check the disk"
    thread = Thread(slack, OPS, root["ts"])
    card = await thread.wait_card()
    await slack.toggle_checkbox(
        APPROVER, OPS, card["ts"], *checkbox_block(card, "1"), "1", checked=False
    )  # not the post
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    done = await thread.wait_progress("Done")
    assert "All good &lt;!here&gt;" in done["text"]
    run_id = card_value(card).split(":")[0]

    # A rewind note quotes the model's proposal; a rejection reason comes back in the audit log.
    await slack.slash_command(REQUESTER, OPS, "/chatops", f"rewind {run_id}")
    second = await thread.wait_card()
    assert second["ts"] != card["ts"]
    await slack.click_button(APPROVER, OPS, second["ts"], "reject")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the reject dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    await slack.submit_view(APPROVER, view["id"], {"reason": {"reason": "<!everyone> not today"}})
    await slack.wait_for(lambda: header_of(slack.message(OPS, second["ts"])) == "Approval decided", timeout=20)
    audit = await slack.slash_command(REQUESTER, OPS, "/chatops", f"audit {run_id}")
    assert "&lt;!everyone&gt; not today" in audit.body
    await asyncio.sleep(1)
    assert live_broadcasts(slack) == []
    assert "<!" not in audit.body


# --- 5. one thread, one run, one requester ---------------------------------------------------------------------


async def test_two_mentions_in_one_thread_at_once_never_swap_the_requester(slack, start, model, runbooks):
    start()
    model.reset(
        [
            rule(
                {"tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}], "chunk_delay": 0.01},
                has_tool_results=False,
            ),
            rule({"text": "Recorded."}, has_tool_results=True),
        ]
    )
    for trial in range(5):
        await slack.post_user_message(REQUESTER, OPS, f"disk trouble on web-{trial}")
        root = [m for m in slack.messages(OPS) if m.get("user") == REQUESTER][-1]
        thread = Thread(slack, OPS, root["ts"])
        tasks = {REQUESTER: f"alice wants record {trial}", OTHER: f"carol wants record {trial}"}
        await asyncio.gather(
            *(
                slack.post_user_message(user, OPS, f"<@U0BOT> {task}", thread_ts=root["ts"])
                for user, task in tasks.items()
            )
        )
        card = await thread.wait_card()
        await slack.wait_for(
            lambda: any("already working on" in m.get("text", "") for m in thread.replies()),  # noqa: B023 - awaited here
            timeout=10,
            description="the second mention told what is under way",
        )
        text = all_text(card)
        winner = REQUESTER if f"<@{REQUESTER}> asked:" in text else OTHER
        loser = OTHER if winner == REQUESTER else REQUESTER
        assert f"<@{winner}> asked:\n{tasks[winner]}" in text, text  # who asked and what: one person's
        assert tasks[loser] not in text
        refusal = next(m["text"] for m in thread.replies() if "already working on" in m.get("text", ""))
        assert f"“{tasks[winner]}” for <@{winner}>" in refusal
        progress = [m for m in thread.replies() if m.get("user") == "U0BOT" and "· asked by" in all_text(m)]
        assert len(progress) == 1 and f"asked by <@{winner}>" in all_text(progress[0])
        # The winner may not approve their own run; the other person may.
        await slack.click_button(winner, OPS, card["ts"], "approve")
        await slack.wait_for(lambda: slack.ephemerals(winner), timeout=10)  # noqa: B023 - awaited here
        assert "someone else has to approve" in slack.ephemerals(winner)[-1]["text"]
        await slack.click_button(APPROVER, OPS, card["ts"], "approve")
        await slack.wait_for(
            lambda: "Done" in all_text(slack.message(OPS, progress[0]["ts"])),  # noqa: B023 - awaited here
            timeout=20,
            description="the run to end",
        )


# --- 6. no review without a visible card ----------------------------------------------------------------------


def is_card(params: dict[str, Any]) -> bool:
    blocks = params.get("blocks")
    return "Approval needed" in (blocks if isinstance(blocks, str) else json.dumps(blocks or []))


async def test_a_card_that_slack_refused_is_posted_again_and_the_thread_says_so_meanwhile(
    slack, start, model, runbooks
):
    start()
    script_three_calls(model)
    slack.inject_fault("chat.postMessage", status=500, times=4, when=is_card)  # every first attempt fails
    thread = await mention(slack, TASK)
    await thread.wait_progress("the card was not delivered yet — retrying", timeout=30)
    pending = await slack.slash_command(OTHER, OPS, "/chatops", "pending")
    assert "card not delivered yet — retrying" in pending.body
    card = await thread.wait_card(timeout=40)  # a sweeper posts it again
    await thread.wait_progress("see the card below")
    assert len([m for m in thread.replies() if header_of(m) == "Approval needed"]) == 1
    assert "open the card" in (await slack.slash_command(OTHER, OPS, "/chatops", "pending")).body
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    assert len(runbooks.executions("disk-usage")) == 1


async def test_a_crash_between_the_review_and_its_card_still_posts_the_card(slack, start, model, runbooks):
    first = start()
    script_three_calls(model)
    slack.inject_fault("chat.postMessage", status=500, times=1000, when=is_card)
    thread = await mention(slack, TASK)
    await slack.wait_for(
        lambda: any(c.get("status") == 500 for c in slack.calls("chat.postMessage")),
        timeout=20,
        description="the card's first post attempt",
    )
    first.kill()  # the review is checkpointed, its card never reached Slack
    slack.clear_faults()
    start()
    card = await thread.wait_card(timeout=60)
    await asyncio.sleep(1)
    assert len([m for m in thread.replies() if header_of(m) == "Approval needed"]) == 1
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done", timeout=30)
    assert len(runbooks.executions("disk-usage")) == 1


# --- 8. every click and dialog counts only on its own card ------------------------------------------------------


async def test_a_click_from_another_channel_changes_nothing(slack, start, model, runbooks):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    value = card_value(card)
    elsewhere = slack.workspace.post_message(GENERAL, OTHER, "a message in #general")
    forged = await deliver_click_in(slack, APPROVER, GENERAL, elsewhere["ts"], value)
    assert forged.status == 200
    await slack.wait_for(lambda: slack.ephemerals(APPROVER), timeout=10, description="a refusal")
    assert "not on this run's approval card" in slack.ephemerals(APPROVER)[-1]["text"]
    await asyncio.sleep(1)
    assert runbooks.executions() == [] and header_of(slack.message(OPS, card["ts"])) == "Approval needed"
    # Nor does a click on another message of the run's own thread.
    await deliver_click_in(slack, APPROVER, OPS, thread.ts, value)
    await slack.wait_for(lambda: len(slack.ephemerals(APPROVER)) >= 2, timeout=10, description="a second refusal")
    assert runbooks.executions() == []
    # The real card still works, and is the one rewritten.
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    await thread.wait_decided(card["ts"])


async def deliver_click_in(slack: LocalSlack, user: str, channel: str, ts: str, value: str) -> Any:
    payload = {
        "type": "block_actions",
        "user": {"id": user},
        "api_app_id": "A0LOCAL",
        "team": {"id": "T0LOCAL"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "trigger_id": slack.new_trigger(user),
        "actions": [
            {
                "type": "button",
                "action_id": "approve",
                "block_id": "x",
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return await slack.deliver_raw(
        urlencode({"payload": json.dumps(payload)}), {"Content-Type": "application/x-www-form-urlencoded"}
    )


async def deliver_view(slack: LocalSlack, user: str, view: dict[str, Any], values: dict[str, Any]) -> Any:
    payload = {
        "type": "view_submission",
        "user": {"id": user},
        "api_app_id": "A0LOCAL",
        "team": {"id": "T0LOCAL"},
        "view": {**view, "state": {"values": values}},
        "trigger_id": slack.new_trigger(user),
    }
    return await slack.deliver_raw(
        urlencode({"payload": json.dumps(payload)}), {"Content-Type": "application/x-www-form-urlencoded"}
    )


async def test_a_dialog_counts_only_for_the_view_the_bot_opened_for_that_person(slack, start, model, runbooks):
    bot = start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    value = card_value(card)
    run_id, interrupt = value.split(":")
    metadata = json.dumps({"run": run_id, "interrupt": interrupt, "channel": OPS, "card_ts": card["ts"]})
    reason = {"reason": {"reason": {"type": "plain_text_input", "value": "forged"}}}

    # A view the bot never opened, naming the card.
    forged = await deliver_view(
        slack,
        OTHER,
        {"id": "V0FORGED", "type": "modal", "callback_id": "reject_review", "private_metadata": metadata, "blocks": []},
        reason,
    )
    assert forged.status == 200 and forged.json["response_action"] == "errors"

    # Bob opens the reject dialog; Carol submits Bob's view.
    await slack.click_button(APPROVER, OPS, card["ts"], "reject")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the reject dialog")
    bobs = slack.views(APPROVER, open_only=True)[-1]["view"]
    stolen = await deliver_view(slack, OTHER, bobs, reason)
    assert stolen.json["response_action"] == "errors"
    await asyncio.sleep(1)
    assert header_of(slack.message(OPS, card["ts"])) == "Approval needed"

    # Bob's own submission counts, once; a replay of it counts for nothing.
    done = await slack.submit_view(APPROVER, bobs["id"], {"reason": {"reason": "wrong runbook"}})
    assert done.status == 200 and not done.body
    await thread.wait_decided(card["ts"])
    replay = await deliver_view(slack, APPROVER, bobs, reason)
    assert replay.json["response_action"] == "errors"
    assert "forged" not in all_text(slack.message(OPS, card["ts"]))
    assert runbooks.executions() == []
    assert bot.log().count("refused a reject dialog submission") == 3


async def test_a_tools_own_no_to_self_approval_wins_over_the_global_yes(slack, start, model, runbooks, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  run_runbook: {mode: ask, allow_self_approval: false}\n")
    start(CHATOPS_POLICY_FILE=str(policy), CHATOPS_ALLOW_SELF_APPROVAL="true")
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(REQUESTER, OPS, card["ts"], "approve")
    await slack.wait_for(lambda: slack.ephemerals(REQUESTER), timeout=10)
    assert "someone else has to approve `run_runbook`" in slack.ephemerals(REQUESTER)[-1]["text"]
    assert runbooks.executions() == []
    # post_message has no rule of its own: the global yes applies to it.
    for n in ("0", "1"):
        await slack.toggle_checkbox(REQUESTER, OPS, card["ts"], *checkbox_block(card, n), n, checked=False)
    await slack.click_button(REQUESTER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    assert runbooks.executions() == [] and [
        m["text"] for m in slack.messages(OPS) if m.get("user") == "U0BOT" and m.get("text") == "Disk at 42%."
    ] == ["Disk at 42%."]


async def test_signed_payloads_missing_fields_are_acked_and_refused(slack, start, model, runbooks):
    bot = start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    value = card_value(card)
    no_container = {
        "type": "block_actions",
        "user": {"id": APPROVER},
        "api_app_id": "A0LOCAL",
        "team": {"id": "T0LOCAL"},
        "actions": [{"action_id": "approve", "value": value, "block_id": "x"}],
    }
    no_user = {**no_container, "container": {"channel_id": OPS, "message_ts": card["ts"]}}
    no_user.pop("user")
    for payload in (no_container, no_user):
        answer = await slack.deliver_raw(
            urlencode({"payload": json.dumps(payload)}), {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert answer.status == 200  # acked (the local Slack gives up after 3 s, as Slack does)
    command = urlencode({"command": "/chatops", "text": "pending", "channel_id": OPS, "team_id": "T0LOCAL"})
    answer = await slack.deliver_raw(command, {"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 200
    await asyncio.sleep(0.5)
    assert runbooks.executions() == [] and header_of(slack.message(OPS, card["ts"])) == "Approval needed"
    log = bot.log()
    assert "refused a signed block_actions without container" in log
    assert "refused a signed block_actions without user" in log
    assert "refused a signed /chatops without user_id" in log


# --- 9. who sees what --------------------------------------------------------------------------------------------


async def test_pending_shows_others_only_the_runs_of_the_channel_they_ask_in(slack, start, model):
    start()
    secret = slack.add_channel("secret-incident", is_private=True)
    script_three_calls(model)
    in_private = await mention(slack, TASK, user=REQUESTER, channel=secret)
    await in_private.wait_card()
    dm = slack.dm_channel(APPROVER)
    await slack.post_user_message(APPROVER, dm, TASK)
    await slack.wait_for(
        lambda: any(header_of(m) == "Approval needed" for m in slack.messages(dm, slack.messages(dm)[0]["ts"])),
        timeout=20,
        description="a card in Bob's DM",
    )

    async def pending(user: str, channel: str) -> str:
        return (await slack.slash_command(user, channel, "/chatops", "pending")).body

    assert "No approval cards are waiting in this channel" in await pending(OTHER, OPS)
    assert "1 approval card waiting in this channel" in await pending(OTHER, secret)
    assert "1 approval card waiting for runs you asked for" in await pending(APPROVER, dm)
    assert "No approval cards are waiting for runs you asked for" in await pending(OTHER, slack.dm_channel(OTHER))
    assert "2 approval cards waiting*" in await pending(REQUESTER, OPS)  # Alice is an admin


# --- 10. faults say so -----------------------------------------------------------------------------------------


async def test_runbook_lookup_stays_in_its_folder_and_errors_name_no_path(slack, start, model, runbooks, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "zebra.md").write_text("# zebra secrets\nthe zebra password is hunter2\n")
    (outside / "zebra.sh").write_text(f'#!/usr/bin/env bash\necho "zebra $$" >> "{runbooks.log}"\n')
    (runbooks.dir / "zebra-notes.md").symlink_to(outside / "zebra.md")
    (runbooks.dir / "zebra.sh").symlink_to(outside / "zebra.sh")
    start()
    long_name = "x" * 5000
    model.reset(
        [
            rule(
                {
                    "tool_calls": [
                        {"name": "search_runbooks", "args": {"query": "zebra password"}},
                        {"name": "run_runbook", "args": {"name": "zebra"}},
                        {"name": "run_runbook", "args": {"name": long_name}},
                    ]
                },
                has_tool_results=False,
            ),
            rule({"text": "Looked."}, has_tool_results=True),
        ]
    )
    thread = await mention(slack, "look for the zebra runbook")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    ended = all_text(await thread.wait_progress("Failed"))  # the lookup of "zebra" failed: said, not "Done"
    assert "What failed:" in ended and "no runbook named 'zebra'" in ended and "hunter2" not in ended
    results = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert "no runbook matches" in results[0] and "hunter2" not in json.dumps(results)
    assert "no runbook named 'zebra'" in results[1]
    assert "is not a runbook name" in results[2]
    everything = json.dumps(model.requests) + json.dumps(slack.calls())
    assert str(runbooks.dir) not in everything and str(tmp_path) not in everything
    assert runbooks.executions("zebra") == []


async def test_a_redis_outage_during_a_click_or_mention_is_said_and_loses_nothing(
    slack, env, model, runbooks, redis_url, tmp_path
):
    from .netfault import TcpProxy

    async with TcpProxy.in_front_of(redis_url) as proxy:
        # The proxy runs on this event loop: start and stop the bot from a thread so the loop keeps serving it.
        bot = await asyncio.to_thread(start_bot, slack, {**env, "REDIS_URL": proxy.url}, tmp_path / "bot.log")
        try:
            script_three_calls(model)
            thread = await mention(slack, TASK)
            card = await thread.wait_card()
            # Down once the run has paused and let go of its thread (a click then finds nothing in progress).
            lock = Keys(env["CHATOPS_KEY_PREFIX"]).lock_prefix + card_value(card).split(":")[0]
            direct = AsyncRedis.from_url(redis_url)

            async def released() -> bool:
                return not await direct.exists(lock)

            try:
                await slack.wait_for(released, timeout=20, description="the run to let go of its thread")
            finally:
                await direct.aclose()

            proxy.refuse()  # Redis is down
            click = await slack.click_button(APPROVER, OPS, card["ts"], "approve")
            assert click.status == 200
            await slack.wait_for(lambda: slack.ephemerals(APPROVER), timeout=45, description="a word to the clicker")
            assert "could not record that" in slack.ephemerals(APPROVER)[-1]["text"]
            await slack.post_user_message(OTHER, OPS, "<@U0BOT> check the disk")
            await slack.wait_for(lambda: slack.ephemerals(OTHER), timeout=45, description="a word to the asker")
            assert "could not record that" in slack.ephemerals(OTHER)[-1]["text"]

            def health() -> tuple[int, str]:
                try:
                    with urllib.request.urlopen(bot.health_url, timeout=20) as response:
                        return response.status, response.read().decode()
                except urllib.error.HTTPError as error:
                    return error.code, error.read().decode()

            status, body = await asyncio.to_thread(health)
            assert status == 503 and json.loads(body) == {"ok": False, "mode": "http", "redis": "unreachable"}
            assert str(proxy.port) not in body and "127.0.0.1" not in body
            assert runbooks.executions() == []

            proxy.restore()  # back: nothing was lost, the card still works
            await slack.click_button(APPROVER, OPS, card["ts"], "approve")
            await thread.wait_progress("Done", timeout=45)
            assert len(runbooks.executions("disk-usage")) == 1
        finally:
            assert await asyncio.to_thread(bot.stop) == 0
        assert "Traceback" not in bot.log(), bot.log()[-3000:]
        assert "could not reach Redis" in bot.log()
