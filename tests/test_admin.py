"""Admin controls and approval policy, through the local Slack over real HTTP with real Redis:
/chatops subcommands for admins and others, rewind, cancel, M-of-N approvals, self-approval, expiry, audit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.commands import FOLLOWS
from sandbox.slack import LocalSlack

from .bot_support import (
    APPROVER,
    OPS,
    OTHER,
    REQUESTER,
    TASK,
    all_text,
    bot_env,
    card_value,
    checkbox_block,
    header_of,
    mention,
    script_three_calls,
)
from .test_bot import deliver_click

ROOT = Path(__file__).resolve().parents[1]
ADMIN, NOBODY = REQUESTER, OTHER  # Alice is the admin; Carol is not


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir, CHATOPS_ADMINS=ADMIN)


async def chatops(slack: LocalSlack, user: str, text: str) -> str:
    """The answer as the caller sees it: the ack's, or (for an answer not ready by then) the one that follows
    through the command's response_url."""
    later = len([e for e in slack.ephemerals(user) if e.get("source") == "response_url"])
    answer = await slack.slash_command(user, OPS, "/chatops", text)
    assert answer.status == 200, answer.body
    if answer.body != FOLLOWS:
        return answer.body
    followed = await slack.wait_for(
        lambda: [e for e in slack.ephemerals(user) if e.get("source") == "response_url"][later:],
        timeout=15,
        description="the answer through the response_url",
    )
    return str(followed[0]["text"])


def run_id_of(card: dict) -> str:
    return card_value(card).split(":")[0]


def audit_export(env: dict, run_id: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "bot.audit", "--run", run_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": env["REDIS_URL"], "CHATOPS_KEY_PREFIX": env["CHATOPS_KEY_PREFIX"]},
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_pending_lists_open_cards_for_anyone(slack, start, model):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    answer = await chatops(slack, NOBODY, "pending")
    run_id = run_id_of(card)
    assert f"run `{run_id}` by <@{REQUESTER}>: run_runbook, run_runbook, post_message — waiting" in answer
    assert f"/archives/{OPS}/p{card['ts'].replace('.', '')}" in answer  # a link to the card
    assert slack.ephemerals(NOBODY)[-1]["text"] == answer  # only the caller sees it
    assert "/chatops rewind" in await chatops(slack, NOBODY, "help")


async def test_admin_commands_refuse_everyone_else(slack, start, model, runbooks):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    run_id = run_id_of(card)
    for sub in (f"history {run_id}", f"rewind {run_id}", f"cancel {run_id}", "audit", f"audit {run_id}"):
        answer = await chatops(slack, NOBODY, sub)
        assert "is for admins" in answer and "nothing was changed" in answer, sub
    await asyncio.sleep(0.5)
    assert header_of(slack.message(OPS, card["ts"])) == "Approval needed"
    assert "The audit log has nothing" in await chatops(slack, ADMIN, f"audit {run_id}")


async def test_history_of_a_run_by_id_or_thread_link(slack, start, model):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    run_id = run_id_of(card)

    by_id = await chatops(slack, ADMIN, f"history {run_id}")
    lines = by_id.splitlines()
    assert lines[0].startswith(f"*History of run* `{run_id}`")
    assert "ended, done: Finished: disk usage is 42%." in lines[1]
    assert any("the model proposed run_runbook(name=disk-usage)" in line for line in lines)
    assert any(
        "decided: run_runbook approved, run_runbook approved, post_message approved" in line
        and line.endswith(f"— by <@{APPROVER}>")
        for line in lines
    )
    link = f"<http://127.0.0.1:{slack.port}/archives/{OPS}/p{thread.ts.replace('.', '')}>"
    assert await chatops(slack, ADMIN, f"history {link}") == by_id


async def test_rewind_after_an_approval_asks_again_and_old_cards_go_stale(slack, start, model, runbooks, env):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    first = await thread.wait_card()
    run_id = run_id_of(first)
    await slack.click_button(APPROVER, OPS, first["ts"], "approve")
    await thread.wait_progress("Done")
    assert len(runbooks.executions("disk-usage")) == 1

    answer = await chatops(slack, ADMIN, f"rewind {run_id}")
    assert answer.startswith(f"Rewinding run `{run_id}`")
    await slack.wait_for(
        lambda: any(f"was rewound by <@{ADMIN}>" in m.get("text", "") for m in thread.replies()),
        timeout=15,
        description="a note in the thread",
    )
    second = await thread.wait_card()
    assert second["ts"] != first["ts"]
    assert len(runbooks.executions("disk-usage")) == 1  # nothing ran again yet

    old_value = (
        f"{run_id}:"
        + next(
            e["value"]
            for b in first["blocks"]
            if b.get("type") == "actions"
            for e in b["elements"]
            if e.get("action_id") == "approve"
        ).split(":")[1]
    )
    await deliver_click(slack, OTHER, first, "approve", old_value)
    await slack.wait_for(lambda: slack.ephemerals(OTHER), timeout=10)
    assert "no longer current" in slack.ephemerals(OTHER)[-1]["text"]
    assert len(runbooks.executions("disk-usage")) == 1

    await slack.click_button(APPROVER, OPS, second["ts"], "approve")
    await slack.wait_for(lambda: len(runbooks.executions("disk-usage")) == 2, timeout=20, description="the rerun")
    actions = [e["action"] for e in audit_export(env, run_id)]
    assert actions == ["approved"] * 3 + ["rewound"] + ["approved"] * 3


async def test_cancel_a_paused_run(slack, start, model, runbooks, env):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    run_id = run_id_of(card)
    assert (await chatops(slack, ADMIN, f"cancel {run_id}")).startswith(f"Cancelling run `{run_id}`")
    await slack.wait_for(lambda: header_of(slack.message(OPS, card["ts"])) == "Approval cancelled", timeout=15)
    assert f"Cancelled by <@{ADMIN}>" in all_text(slack.message(OPS, card["ts"]))
    await thread.wait_progress("Cancelled")
    assert not any(b.get("type") == "actions" for b in slack.message(OPS, card["ts"])["blocks"])  # no buttons left
    assert runbooks.executions() == []
    assert "already cancelled" in await chatops(slack, ADMIN, f"cancel {run_id}")
    assert [e["action"] for e in audit_export(env, run_id)] == ["cancelled"]


async def test_two_of_two_approvals(slack, start, model, runbooks, env, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  run_runbook:\n    mode: ask\n    required_approvals: 2\n")
    start(CHATOPS_POLICY_FILE=str(policy))
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    run_id = run_id_of(card)
    assert "0 of 2 approvals" in all_text(card)

    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await slack.wait_for(lambda: "1 of 2 approvals" in all_text(slack.message(OPS, card["ts"])), timeout=15)
    assert f"<@{APPROVER}>" in all_text(slack.message(OPS, card["ts"]))
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")  # the same person again counts once
    await slack.wait_for(lambda: slack.ephemerals(APPROVER), timeout=10)
    assert "already approved" in slack.ephemerals(APPROVER)[-1]["text"]
    assert runbooks.executions() == []

    await slack.click_button(OTHER, OPS, card["ts"], "approve")
    await thread.wait_progress("Done")
    assert len(runbooks.executions("disk-usage")) == 1 and len(runbooks.executions("record")) == 1
    decided = all_text(await thread.wait_decided(card["ts"]))
    assert f"Decided by <@{APPROVER}>, <@{OTHER}>" in decided
    actions = [(e["action"], e["by"]) for e in audit_export(env, run_id)]
    assert actions[:2] == [("approval", APPROVER), ("approval", OTHER)]
    assert [a for a, _ in actions[2:]] == ["approved"] * 3


async def test_one_rejection_vetoes_a_card_that_needs_two(slack, start, model, runbooks, env, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  run_runbook: {required_approvals: 2}\n")
    start(CHATOPS_POLICY_FILE=str(policy))
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    await slack.wait_for(lambda: "1 of 2 approvals" in all_text(slack.message(OPS, card["ts"])), timeout=15)
    await slack.click_button(OTHER, OPS, card["ts"], "reject")
    await slack.wait_for(lambda: slack.views(OTHER, open_only=True), timeout=10)
    view = slack.views(OTHER, open_only=True)[-1]["view"]
    await slack.submit_view(OTHER, view["id"], {"reason": {"reason": "not on a Friday"}})
    await thread.wait_progress("Nothing ran: every call was rejected")
    assert runbooks.executions() == []
    entries = audit_export(env, run_id_of(card))
    assert [e["action"] for e in entries] == ["approval", "rejected", "rejected", "rejected"]
    assert entries[1]["details"]["reason"] == "not on a Friday" and entries[1]["by"] == OTHER


async def test_self_approval_follows_the_policy(slack, start, model, runbooks, tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("tools:\n  post_message: {allow_self_approval: true}\n")
    start(CHATOPS_POLICY_FILE=str(policy))
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.click_button(REQUESTER, OPS, card["ts"], "approve")  # everything ticked: the runbooks too
    await slack.wait_for(lambda: slack.ephemerals(REQUESTER), timeout=10)
    assert "someone else has to approve `run_runbook`" in slack.ephemerals(REQUESTER)[-1]["text"]
    for value in ("0", "1"):
        await slack.toggle_checkbox(REQUESTER, OPS, card["ts"], *checkbox_block(card, value), value, checked=False)
    await slack.click_button(REQUESTER, OPS, card["ts"], "approve")  # only the post: allowed for oneself
    await thread.wait_progress("Done")
    assert runbooks.executions() == []
    assert [m["text"] for m in slack.messages(OPS) if m.get("user") == "U0BOT"] == ["Disk at 42%."]


async def test_an_unanswered_card_expires_and_is_recorded_as_expired(slack, start, model, runbooks, env):
    start(CHATOPS_EXPIRES_AFTER="2s")
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    await slack.wait_for(lambda: header_of(slack.message(OPS, card["ts"])) == "Approval expired", timeout=20)
    assert "nobody decided within 2s" in all_text(slack.message(OPS, card["ts"]))
    await thread.wait_progress("Expired")
    assert not any(b.get("type") == "actions" for b in slack.message(OPS, card["ts"])["blocks"])  # no buttons left
    assert runbooks.executions() == [] and len(model.requests) == 1
    entries = audit_export(env, run_id_of(card))
    assert [(e["action"], e["by"]) for e in entries] == [("expired", "system")]
    assert "expired" in await chatops(slack, ADMIN, f"audit {run_id_of(card)}")


async def test_bad_subcommand_input_gets_a_clear_message(slack, start, model):
    start()
    script_three_calls(model)
    thread = await mention(slack, TASK)
    card = await thread.wait_card()
    run_id = run_id_of(card)
    assert "I know no run `zzzz9999`" in await chatops(slack, ADMIN, "history zzzz9999")
    assert "neither a run id" in await chatops(slack, ADMIN, "history https://example.invalid/not-a-thread")
    assert "That thread has no run of mine" in await chatops(
        slack, ADMIN, f"history <http://x/archives/{OPS}/p1234567890123456>"
    )
    assert "has no checkpoint 'nope1234'" in await chatops(slack, ADMIN, f"rewind {run_id} nope1234")
    assert "Usage: `/chatops history <run>`" in await chatops(slack, ADMIN, "history")
    assert "Usage: `/chatops run <task>`" in await chatops(slack, ADMIN, "run")
    assert "I don't know `/chatops frobnicate`" in await chatops(slack, ADMIN, "frobnicate")
    assert header_of(slack.message(OPS, card["ts"])) == "Approval needed"
