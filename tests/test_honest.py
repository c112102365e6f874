"""Honest and reachable, as a person in Slack sees it: every run ends in a true state, every card reaches someone
who can decide it, only deciders are offered decider UI, answers land where the person clicked, history reads
like a person wrote it, and a Slack that forgot its threads is explained rather than silently failed.

The real bot process over real HTTP with signed requests, the local Slack, the scripted model and real Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.openai_server import rule

from .bot_support import (
    APPROVER,
    OPS,
    OTHER,
    REQUESTER,
    Thread,
    all_text,
    bot_env,
    card_value,
    header_of,
    mention,
    propose,
)

REVIEWS = "C0APPROVALS"


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(
        slack, redis_url, model.base_url, runbooks.dir, CHATOPS_ADMINS=REQUESTER, CHATOPS_APPROVERS="U0ALICE U0BOB"
    )


DISK = {"name": "run_runbook", "args": {"name": "disk-usage"}}
POST = {"name": "post_message", "args": {"channel": "#ops", "text": "Disk at 42%."}}


async def chatops(slack, user: str, text: str, channel: str = OPS) -> str:
    answer = await slack.slash_command(user, channel, "/chatops", text)
    assert answer.status == 200, answer.body
    return answer.body


async def dm(slack, user: str, text: str) -> Thread:
    channel = slack.dm_channel(user)
    deliveries = await slack.post_user_message(user, channel, text)
    assert all(d.status == 200 for d in deliveries)
    root = [m for m in slack.messages(channel) if m.get("user") == user][-1]
    return Thread(slack, channel, root["ts"])


def top_level_cards(slack, channel: str) -> list[dict[str, Any]]:
    return [m for m in slack.messages(channel) if header_of(m).startswith("Approval")]


def bot_ephemerals(slack, user: str) -> list[dict[str, Any]]:
    return slack.ephemerals(user)


# --- 1. cards reach deciders ------------------------------------------------------------------------------


async def test_a_dm_request_is_decided_in_the_review_channel(slack, start, model, runbooks):
    slack.add_channel("approvals")
    start(CHATOPS_REVIEW_CHANNEL=REVIEWS)
    propose(model, DISK, after="Disk usage is 42%.")
    thread = await dm(slack, REQUESTER, "run the disk-usage runbook")

    await slack.wait_for(lambda: top_level_cards(slack, REVIEWS), timeout=20, description="a card in #approvals")
    card = top_level_cards(slack, REVIEWS)[0]
    assert thread.card() is None, "nobody but Alice could see a card in her DM"
    assert "asked in a DM with the bot" in all_text(card) and f"<@{REQUESTER}> asked:" in all_text(card)
    waiting = await thread.wait_progress("Waiting for approval")
    assert f"the card is in <#{REVIEWS}>" in all_text(waiting)
    assert f"/archives/{REVIEWS}/p{card['ts'].replace('.', '')}" in all_text(waiting)  # Alice is told where

    # Bob, in the review channel, finds it in pending, with a link that opens the card there.
    pending = await chatops(slack, APPROVER, "pending", channel=REVIEWS)
    assert f"/archives/{REVIEWS}/p{card['ts'].replace('.', '')}" in pending and "run_runbook" in pending

    click = await slack.click_button(APPROVER, REVIEWS, card["ts"], "approve")
    assert click.status == 200
    done = await thread.wait_progress("Done")
    assert "Disk usage is 42%." in all_text(done)
    assert len(runbooks.executions("disk-usage")) == 1
    await slack.wait_for(lambda: header_of(slack.message(REVIEWS, card["ts"]) or {}) == "Approval decided", timeout=10)
    assert "asked in a DM with the bot" in all_text(slack.message(REVIEWS, card["ts"]))  # still says where


async def test_every_request_can_be_sent_to_the_review_channel(slack, start, model, runbooks):
    slack.add_channel("approvals")
    start(CHATOPS_REVIEW_CHANNEL=REVIEWS, CHATOPS_REVIEW_ALL="true")
    propose(model, DISK)
    thread = await mention(slack, "run the disk-usage runbook")
    await slack.wait_for(lambda: top_level_cards(slack, REVIEWS), timeout=20, description="a card in #approvals")
    card = top_level_cards(slack, REVIEWS)[0]
    assert f"asked in <#{OPS}>" in all_text(card) and "the request's thread" in all_text(card)
    assert thread.card() is None
    await slack.click_button(APPROVER, REVIEWS, card["ts"], "approve")
    await thread.wait_progress("Done")


async def test_a_dm_request_with_no_review_channel_is_told_at_once(slack, start, model, runbooks):
    start()
    propose(model, DISK)
    thread = await dm(slack, REQUESTER, "run the disk-usage runbook")
    await slack.wait_for(
        lambda: any("CHATOPS_REVIEW_CHANNEL" in m.get("text", "") for m in thread.replies()),
        timeout=20,
        description="a heads-up in the DM",
    )
    heads_up = next(m["text"] for m in thread.replies() if "CHATOPS_REVIEW_CHANNEL" in m.get("text", ""))
    assert "approvers cannot see cards in a DM" in heads_up
    card = await thread.wait_card()
    assert "no approver can" in all_text(card)


# --- 2, 3. true end states; Reject stops -----------------------------------------------------------------


async def test_nothing_to_do_says_so_and_what_the_bot_can_do(slack, start, model):
    start()
    model.reset([rule({"text": "I have no tool to restart services."})])
    thread = await mention(slack, "restart the web service")
    ended = await thread.wait_progress("Nothing to do")
    shown = all_text(ended)
    assert "Done" not in shown and "I have no tool to restart services." in shown
    assert "What I can do:" in shown and "run_runbook" in shown and "http_check" in shown


async def test_a_failed_check_ends_failed_saying_which_and_why(slack, start, model, health_url):
    start(CHATOPS_HTTP_ALLOW=f"{health_url}/")
    model.reset(
        [
            rule(
                {"tool_calls": [{"name": "http_check", "args": {"url": f"{health_url}/missing"}}]},
                has_tool_results=False,
            ),
            rule({"text": "The API is down."}, has_tool_results=True),
        ]
    )
    thread = await mention(slack, "check the API")
    ended = await thread.wait_progress("Failed")
    shown = all_text(ended)
    assert "Done" not in shown and "What failed:" in shown and "503" in shown
    assert "http_check failed: http_check failed" not in shown and "failed: http_check failed" not in shown


async def test_reject_ends_the_run_and_the_model_is_not_asked_again(slack, start, model, runbooks):
    start()
    propose(model, DISK, POST)
    thread = await mention(slack, "run the disk-usage runbook and post to #ops")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "reject")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the reject dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    assert "the run ends" in all_text(view)
    asked = len(model.requests)
    await slack.submit_view(APPROVER, view["id"], {"reason": {"reason": "not during the freeze"}})
    ended = await thread.wait_progress("Nothing ran: every call was rejected")
    shown = all_text(ended)
    assert "not during the freeze" in shown and f"<@{APPROVER}>" in shown
    assert len(model.requests) == asked, "the model was asked again after a Reject"
    assert len([m for m in thread.replies() if header_of(m) == "Approval needed"]) == 0
    decided = all_text(await thread.wait_decided(card["ts"]))
    assert "⛔ rejected (not during the freeze)" in decided and "0 of 2 calls allowed to run" in decided
    assert runbooks.executions() == [] and [m for m in slack.messages(OPS) if m.get("user") == "U0BOT"] == []


async def test_reject_can_let_the_agent_try_another_way(slack, start, model, runbooks):
    start()
    model.reset(
        [
            rule({"tool_calls": [DISK]}, has_tool_results=False),
            rule({"tool_calls": [POST]}, last_tool_contains="use a post instead", times=1),
            rule({"text": "Posted instead."}, has_tool_results=True),
        ]
    )
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "reject")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the reject dialog")
    view = slack.views(APPROVER, open_only=True)[-1]["view"]
    await slack.submit_view(
        APPROVER, view["id"], {"reason": {"reason": "use a post instead"}, "replan": {"replan": ["yes"]}}
    )
    await slack.wait_for(
        lambda: thread.card() is not None and thread.card()["ts"] != card["ts"], timeout=20, description="a new card"
    )
    second = thread.card()
    assert "post_message" in all_text(second) and "run_runbook" not in all_text(second)
    await slack.click_button(APPROVER, OPS, second["ts"], "approve")
    await thread.wait_progress("Done")
    assert runbooks.executions() == []


async def test_cancel_marks_waiting_calls_as_not_run(slack, start, model):
    start()
    propose(model, DISK)
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    run_id = card_value(card).split(":")[0]
    assert "Cancelling" in await chatops(slack, REQUESTER, f"cancel {run_id}")
    ended = await thread.wait_progress("Cancelled")
    shown = all_text(ended)
    assert "needs approval" not in shown and "not run" in shown


# --- 4, 6. only deciders see decider UI; answers in place --------------------------------------------------


async def test_a_non_approver_is_refused_at_once_and_told_who_can(slack, start, model):
    start()
    propose(model, DISK)
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    for action in ("edit", "reject", "approve"):
        before = len(slack.ephemerals(OTHER))
        await slack.click_button(OTHER, OPS, card["ts"], action)
        await slack.wait_for(
            lambda n=before: len(slack.ephemerals(OTHER)) > n, timeout=10, description=f"a refusal of {action}"
        )
        refusal = slack.ephemerals(OTHER)[-1]
        assert refusal["thread_ts"] == thread.ts, "the answer belongs in the thread of the card"
        assert f"<@{REQUESTER}>" in refusal["text"] or f"<@{APPROVER}>" in refusal["text"]
        assert "untick" not in refusal["text"] and "ask an approver" not in refusal["text"]
    assert slack.views(OTHER) == [], "no dialog is opened for someone who may not decide"
    # Alice asked: she may not approve, and is told what she can do instead (withdraw it).
    await slack.click_button(REQUESTER, OPS, card["ts"], "edit")
    await slack.wait_for(lambda: slack.ephemerals(REQUESTER), timeout=10, description="a refusal")
    said = slack.ephemerals(REQUESTER)[-1]["text"]
    assert "You asked for this run" in said and f"<@{APPROVER}>" in said and "Reject" in said
    assert slack.views(REQUESTER) == []


async def test_user_groups_are_named_not_pinged_in_refusals(slack, start, model):
    start(CHATOPS_APPROVERS="S0ONCALL")  # the local Slack's @oncall group: Alice only
    propose(model, DISK)
    thread = await mention(slack, "run the disk-usage runbook", user=APPROVER)
    card = await thread.wait_card()
    await slack.click_button(OTHER, OPS, card["ts"], "approve")
    await slack.wait_for(lambda: slack.ephemerals(OTHER), timeout=10, description="a refusal")
    said = slack.ephemerals(OTHER)[-1]["text"]
    assert "the @oncall group" in said and "<!subteam" not in said


# --- 8. readable history and cards -------------------------------------------------------------------------


async def test_history_reads_like_a_person_wrote_it(slack, start, model, runbooks):
    start()
    propose(model, DISK, after="Disk usage is 42%.\nAll fine.")
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    run_id = card_value(card).split(":")[0]
    history = await chatops(slack, REQUESTER, f"history {run_id}")
    lines = history.splitlines()
    assert lines[0].startswith("*History of run* `")
    assert all(line.startswith("• `") for line in lines[1:]), "one bullet per checkpoint, nothing breaks a line"
    assert "__start__" not in history and "step -1" not in history and "next " not in history
    assert f"decided: run_runbook approved — by <@{APPROVER}>" in history
    assert " U0BOB" not in history.replace(f"<@{APPROVER}>", "")
    assert "waiting for approval" in history and "ended, done: Disk usage is 42%. All fine." in history


async def test_a_card_lists_each_call_once_and_collapses_a_long_task(slack, start, model):
    start()
    propose(model, DISK, POST)
    task = "run the disk-usage runbook " + " ".join(f"word{n}" for n in range(900)) + " THE-END"
    thread = await mention(slack, task)
    card = await thread.wait_card()
    shown = all_text(card)
    assert shown.count("run_runbook") == 1 and shown.count("post_message") == 1  # each call once
    ticks = [e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"] if e["type"] == "checkboxes"]
    assert [len(t["options"]) for t in ticks] == [1, 1]  # and its own checkbox right under it
    assert "THE-END" not in shown and "more characters of the task not shown here" in shown
    await slack.click_button(APPROVER, OPS, card["ts"], "show_task")
    await slack.wait_for(lambda: slack.views(APPROVER, open_only=True), timeout=10, description="the task dialog")
    whole = all_text(slack.views(APPROVER, open_only=True)[-1]["view"])
    assert "THE-END" in whole and "word899" in whole


# --- 9. restarts explained ---------------------------------------------------------------------------------


async def test_runs_whose_threads_are_gone_are_explained(slack, start, model):
    start()
    propose(model, DISK)
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    run_id = card_value(card).split(":")[0]

    async def linked() -> bool:  # the bot has noted where its card is
        return "open the card" in await chatops(slack, REQUESTER, "pending")

    await slack.wait_for(linked, timeout=10, description="pending to link the card")
    slack.reset()  # what a restart of the sandbox does to its Slack: every message is gone, Redis remembers

    pending = await chatops(slack, REQUESTER, "pending")
    assert f"run `{run_id}`" in pending and "its card is gone from Slack" in pending
    assert f"/chatops cancel {run_id}" in pending
    rewind = await chatops(slack, REQUESTER, f"rewind {run_id}")
    assert "cannot be rewound: its thread is gone" in rewind
    assert not any(m.get("user") == "U0BOT" for m in slack.messages(OPS)), "nothing was posted into the void"
