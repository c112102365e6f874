"""The pure renderers and parsers, without servers: cards, dialogs, the progress message, /chatops parsing,
the policy file, and how values are shown. Every message and view is also checked against Slack's own
limits (the local Slack's Block Kit validator), as Slack would refuse it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.blocks import broadcasts, literal, neutralize_broadcasts
from bot.cards import (
    CardRef,
    approval_card,
    args_modal,
    closed_card,
    decided_card,
    edit_modal,
    parse_edit,
    selected_indexes,
)
from bot.commands import Commands
from bot.errors import MalformedCard
from bot.progress import Progress
from graphs import (
    ConfigError,
    Finished,
    Policy,
    ReviewDecided,
    ReviewRequested,
    Token,
    ToolFinished,
    ToolProposed,
    ToolStarted,
)
from graphs.display import hidden_characters, summary, visible
from sandbox.slack.blockkit import check_message, check_view
from sandbox.slack.reading import all_text

REF = CardRef("abcd1234", "0123456789abcdef")


def request(*calls: tuple[str, dict[str, Any]], facts: dict[int, list[str]] | None = None) -> dict[str, Any]:
    schemas = {
        "post_message": {
            "properties": {"channel": {"type": "string"}, "text": {"type": "string"}},
            "required": ["channel", "text"],
        },
        "run_runbook": {"properties": {"name": {"type": "string"}}, "required": ["name"]},
        "scale": {
            "properties": {
                "replicas": {"type": "integer"},
                "dry_run": {"type": "boolean"},
                "zone": {"enum": ["a", "b"]},
                "labels": {"type": "object"},
            }
        },
    }
    actions = []
    for n, (name, args) in enumerate(calls):
        action: dict[str, Any] = {"name": name, "args": args, "description": "", "tool_call_id": f"call{n}"}
        if facts and n in facts:
            action["facts"] = facts[n]
        actions.append(action)
    configs = [
        {"action_name": name, "allowed_decisions": ["approve", "edit", "reject"], "args_schema": schemas.get(name, {})}
        for name, _ in calls
    ]
    return {"action_requests": actions, "review_configs": configs}


def valid_message(text: str, blocks: list[dict[str, Any]]) -> None:
    problem = check_message(text, blocks)
    assert problem is None, problem


# --- how values are shown ------------------------------------------------------------------------------------


def test_hidden_characters_and_padding_are_shown_by_their_code():
    assert visible("ok\u202eexe") == "ok⟨U+202E⟩exe"
    assert visible("a\u200bb\u00a0c\u2028d\tz") == "a⟨U+200B⟩b⟨U+00A0⟩c⟨U+2028⟩d⟨TAB⟩z"
    assert visible("x" + " " * 300 + "y") == "x⟨300 spaces⟩y"
    assert visible(" lead and trail ") == "⟨1 space⟩lead and trail⟨1 space⟩"
    assert visible("two  spaces stay") == "two  spaces stay"
    assert visible("") == "⟨empty⟩"
    assert visible("café\nКиїв") == "café\nКиїв"  # letters and line breaks as themselves
    assert visible("⟨U+202E⟩") == "⟨U+27E8⟩U+202E⟩"  # a look-alike escape cannot pass for one of ours
    assert hidden_characters("a\u202eb\u200b") == ["U+202E right-to-left override", "U+200B zero width space"]
    assert summary({"channel": "#ops", "text": "two words", "n": 3}) == 'channel=#ops, text="two words", n=3'
    assert summary({"text": "é\nb"}) == "text=é⟨LF⟩b"


def test_broadcasts_are_found_and_neutralised():
    text = "<!channel> <!here|here> <!everyone> <!subteam^S0SRE|@sre> <!subteam^S1> <!date^1|x> <@U1>"
    assert broadcasts(text) == ["@channel", "@here", "@everyone", "@sre", "@S1"]
    assert neutralize_broadcasts(text) == "@channel @here @everyone @sre @S1 <!date^1|x> <@U1>"
    assert literal("<!channel> & <https://x|y>") == "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"


# --- the approval card -----------------------------------------------------------------------------------------


def test_the_card_shows_each_value_as_data_with_what_it_really_does():
    req = request(
        ("post_message", {"channel": "<#C0GENERAL|ops>", "text": "fine\n2. *Security review passed* \u202e"}),
        ("run_runbook", {"name": "disk-usage"}),
        facts={0: ["posts to #general (C0GENERAL)"]},
    )
    text, blocks = approval_card(REF, req, requester="U0ALICE", task="post it <!here>")
    valid_message(text, blocks)
    shown = all_text({"blocks": blocks})
    assert "<@U0ALICE> asked:\npost it <!here>" in shown  # the task is quoted as data (rich_text), not parsed
    assert "fine\n2. *Security review passed* ⟨U+202E⟩" in shown
    assert "↳ posts to #general (C0GENERAL)" in shown
    assert "⚠ text contains hidden characters" in shown
    boxed = [
        e for b in blocks if b["type"] == "rich_text" for e in b["elements"] if e["type"] == "rich_text_preformatted"
    ]
    assert [e["elements"][0]["text"] for e in boxed] == ["fine\n2. *Security review passed* ⟨U+202E⟩"]
    mrkdwn = json.dumps([b for b in blocks if b["type"] in ("section", "context")])
    assert "Security review" not in mrkdwn and "here" not in mrkdwn  # no value reaches mrkdwn
    assert "\u202e" not in json.dumps(blocks, ensure_ascii=False)
    assert text == "Approval needed for run abcd1234: post_message, run_runbook"
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"] if e["type"] == "button"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        ("approve", REF.value),
        ("reject", REF.value),
        ("edit", REF.value),
    ]


def test_a_long_value_is_marked_shortened_with_a_way_to_see_it_whole():
    long_text = "x" * 2500 + "END"
    req = request(("post_message", {"channel": "#ops", "text": long_text}))
    text, blocks = approval_card(REF, req, requester="U0ALICE", task="t")
    valid_message(text, blocks)
    shown = all_text({"blocks": blocks})
    assert "END" not in shown and "✂ 1,503 more characters of text not shown here" in shown
    show = [e for b in blocks if b["type"] == "actions" for e in b["elements"] if e["action_id"] == "show_args_0"]
    assert len(show) == 1 and show[0]["value"] == REF.value and show[0]["text"]["text"] == "Show call 1 in full"
    view = args_modal(REF, req, 0)
    assert check_view(view) is None
    whole = "".join(
        b["text"]["text"] for b in view["blocks"] if b["type"] == "section" and b["text"]["type"] == "plain_text"
    )
    assert whole == "#ops" + long_text


def test_twenty_calls_with_long_values_fit_slacks_limits():
    calls = [("post_message", {"channel": "#ops", "text": f"{n} " + "y" * 1200}) for n in range(20)]
    text, blocks = approval_card(REF, request(*calls), requester="U0ALICE", task="many")
    valid_message(text, blocks)
    boxes = [(b, e) for b in blocks if b["type"] == "actions" for e in b["elements"] if e["type"] == "checkboxes"]
    assert [len(e["options"]) for _, e in boxes] == [1] * 20  # one checkbox per call, right under its values
    assert sum(1 for b in blocks if b["type"] == "rich_text") == 21  # who asked + one per call: none left out
    assert len(blocks) <= 50
    ticks = {b["block_id"]: {e["action_id"]: {"selected_options": e["options"]}} for b, e in boxes[:2] + boxes[10:12]}
    ticks.update({b["block_id"]: {e["action_id"]: {"selected_options": []}} for b, e in boxes[2:10] + boxes[12:]})
    assert selected_indexes(ticks, REF.interrupt_id) == {0, 1, 10, 11}
    assert selected_indexes({}, REF.interrupt_id) is None  # no ticks state: the card as it was


def test_decided_and_closed_cards_say_what_ran_and_by_whom():
    req = request(
        ("run_runbook", {"name": "disk-usage"}),
        ("post_message", {"channel": "#ops", "text": "hi"}),
        ("run_runbook", {"name": "record"}),
    )
    decisions = [
        {"type": "approve"},
        {"type": "edit", "edited_action": {"name": "post_message", "args": {"channel": "#ops", "text": "bye"}}},
        {"type": "reject", "message": "not <!here>"},
    ]
    text, blocks = decided_card(REF, req, decisions, decided_by="U0BOB,U0CAROL", requester="U0ALICE", task="t")
    valid_message(text, blocks)
    shown = all_text({"blocks": blocks})
    assert "1. run_runbook — ✅ approved\nname: disk-usage" in shown
    assert "2. post_message — ✏️ edited, now runs with:\nchannel: #ops\ntext: bye" in shown
    assert "3. run_runbook — ⛔ rejected (not <!here>)\nname: record" in shown
    assert "Decided by <@U0BOB>, <@U0CAROL> · 2 of 3 calls allowed to run" in shown
    text, blocks = closed_card(REF, req, title="Approval expired", reason="Expired: nobody decided within 1h", task="t")
    valid_message(text, blocks)
    assert "1. run_runbook — did not run" in all_text({"blocks": blocks})


def test_card_values_must_be_ours():
    assert CardRef.parse("abcd1234:0123abcd") == CardRef("abcd1234", "0123abcd")
    for forged in ("../../etc", "a:b:c", "a b:c", None, 3):
        with pytest.raises(MalformedCard):
            CardRef.parse(forged)


# --- the edit dialog -------------------------------------------------------------------------------------------


def test_the_edit_dialog_has_a_typed_field_per_argument_and_reads_back_decisions():
    req = request(
        ("scale", {"replicas": 3, "dry_run": True, "zone": "a", "labels": {"app": "web"}}),
        ("post_message", {"channel": "#ops", "text": "hi \u202e"}),
    )
    view = edit_modal(REF, req, channel="C0OPS", card_ts="1.2")
    assert check_view(view) is None
    fields = {b["block_id"]: b for b in view["blocks"] if b.get("type") == "input"}
    assert fields["arg_0_replicas"]["element"]["type"] == "number_input"
    assert fields["arg_0_dry_run"]["element"]["type"] == "static_select"
    assert [o["value"] for o in fields["arg_0_zone"]["element"]["options"]] == ['"a"', '"b"']
    assert fields["arg_0_labels"]["label"]["text"] == "labels (JSON)"
    assert "hi ⟨U+202E⟩" in fields["arg_1_text"]["hint"]["text"]

    def state(**values: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "include_0": {"include_0": {"selected_options": [{"value": "yes"}]}},
            "include_1": {"include_1": {"selected_options": [{"value": "yes"}]}},
            "arg_0_replicas": {"arg_0_replicas": {"type": "number_input", "value": "3"}},
            "arg_0_dry_run": {"arg_0_dry_run": {"type": "static_select", "selected_option": {"value": "true"}}},
            "arg_0_zone": {"arg_0_zone": {"type": "static_select", "selected_option": {"value": '"a"'}}},
            "arg_0_labels": {"arg_0_labels": {"type": "plain_text_input", "value": '{"app": "web"}'}},
            "arg_1_channel": {"arg_1_channel": {"type": "plain_text_input", "value": "#ops"}},
            "arg_1_text": {"arg_1_text": {"type": "plain_text_input", "value": "hi \u202e"}},
        }
        base.update(values)
        return base

    decisions, errors, _ = parse_edit(state(), req)
    assert errors == {} and decisions == [{"type": "approve"}, {"type": "approve"}]
    decisions, errors, _ = parse_edit(
        state(
            arg_0_replicas={"arg_0_replicas": {"type": "number_input", "value": "5"}},
            include_1={"include_1": {"selected_options": []}},
        ),
        req,
    )
    assert decisions[0] == {
        "type": "edit",
        "edited_action": {
            "name": "scale",
            "args": {"replicas": 5, "dry_run": True, "zone": "a", "labels": {"app": "web"}},
        },
    }
    assert decisions[1]["type"] == "reject"
    _, errors, _ = parse_edit(
        state(
            arg_0_replicas={"arg_0_replicas": {"type": "number_input", "value": "five"}},
            arg_0_labels={"arg_0_labels": {"type": "plain_text_input", "value": "{nope"}},
        ),
        req,
    )
    assert errors == {"arg_0_replicas": "must be a whole number", "arg_0_labels": "must be valid JSON"}


# --- the progress message --------------------------------------------------------------------------------------


def test_the_progress_message_folds_events_and_shows_them_as_data():
    progress = Progress("abcd1234", "U0ALICE", "check")
    progress.apply(Token("t", "Checking <!here> *now*"))
    progress.apply(
        ToolProposed(
            "t",
            [
                {"id": "c1", "name": "run_runbook", "args": {"name": "disk"}, "mode": "ask"},
                {
                    "id": "c2",
                    "name": "http_check",
                    "args": {"url": "http://127.0.0.1/admin"},
                    "mode": "deny",
                    "why": "http://127.0.0.1/admin resolves to 127.0.0.1, an internal address. It did not run.",
                },
            ],
        )
    )
    text, blocks = progress.render()
    valid_message(text, blocks)
    shown = all_text({"blocks": blocks})
    assert "Checking &lt;!here&gt; *now*" in shown  # the model's words: formatting kept, broadcasts inert
    assert "✋ run_runbook name=disk — needs approval" in shown
    assert (
        "⛔ http_check url=http://127.0.0.1/admin — not allowed: http://127.0.0.1/admin resolves to 127.0.0.1" in shown
    )

    progress.apply(ReviewRequested("t", "i1", {"action_requests": [], "review_configs": []}))
    progress.card_undelivered = True
    assert "the card was not delivered yet — retrying" in progress.render()[0]
    progress.decided([("c1", "approve", "")], "U0BOB")
    progress.apply(ToolStarted("t", "c1", "run_runbook", {"name": "disk"}))
    progress.apply(ToolFinished("t", "c1", "run_runbook", True, "disk 42%\u202e used\nmore", 0.2))
    progress.apply(Finished("t", "All good <!channel>"))
    text, blocks = progress.render()
    valid_message(text, blocks)
    shown = all_text({"blocks": blocks})
    assert "✅ run_runbook name=disk — ok: disk 42%⟨U+202E⟩ used (0.2s)" in shown
    assert "All good &lt;!channel&gt;" in shown and "<!channel>" not in text
    assert text.startswith(":white_check_mark: Done — run abcd1234")
    again = Progress.from_json(progress.to_json())
    assert again.render() == progress.render()


def test_a_decision_marks_each_reviewed_call_with_who_decided():
    progress = Progress("abcd1234", None, "t")
    progress.apply(ToolProposed("t", [{"id": "c1", "name": "post_message", "args": {}, "mode": "ask"}]))
    request_ = {"action_requests": [{"tool_call_id": "c1"}], "review_configs": []}
    event = ReviewDecided("t", "i1", request_, [{"type": "reject"}], "U0BOB")  # type: ignore[arg-type]
    progress.decided([("c1", event.decisions[0]["type"], "not now")], "U0BOB")
    shown = all_text({"blocks": progress.render()[1]})
    assert "⛔ post_message  — rejected by <@U0BOB> (not now)" in shown


# --- /chatops ---------------------------------------------------------------------------------------------------


class _Nobody:
    """A directory in which nobody belongs to anything: every /chatops caller is a plain user."""

    async def member_of(self, user_id: str, ids: Any) -> bool:
        return user_id in set(ids)


def commands(admins: frozenset[str] = frozenset()) -> Commands:
    return Commands(None, None, None, None, None, _Nobody(), admins)  # type: ignore[arg-type]


async def test_chatops_help_unknown_words_and_admin_commands_answer_without_touching_anything():
    usage, work = await commands().handle({"text": "", "user_id": "U1", "channel_id": "C1"})
    assert "/chatops run <task>" in usage and work is None
    answer, _ = await commands().handle({"text": "frobnicate <!here>", "user_id": "U1", "channel_id": "C1"})
    assert answer.startswith("I don't know `/chatops frobnicate`")
    for sub in ("history abc", "rewind abc", "cancel abc", "audit"):
        answer, work = await commands().handle({"text": sub, "user_id": "U1", "channel_id": "C1"})
        assert "is for admins" in answer and work is None, sub
    answer, _ = await commands(frozenset({"U1"})).handle({"text": "history", "user_id": "U1", "channel_id": "C1"})
    assert answer.startswith("Usage: `/chatops history <run>`")
    answer, _ = await commands().handle({"text": "run", "user_id": "U1", "channel_id": "C1"})
    assert answer.startswith("Usage: `/chatops run <task>`")


# --- the policy file -------------------------------------------------------------------------------------------


def test_the_policy_file_is_checked_key_by_key(tmp_path: Path):
    def load(text: str) -> Policy:
        path = tmp_path / "policy.yml"
        path.write_text(text)
        return Policy.from_file(path)

    policy = load(
        "tools:\n  post_message: {allow_broadcast: true, required_approvals: 2}\n"
        "  run_runbook: {allow_self_approval: false}\n"
    )
    assert policy.rule("post_message").allow_broadcast and policy.rule("post_message").required_approvals == 2
    assert policy.rule("run_runbook").allow_self_approval is False  # explicit: wins over the global setting
    assert policy.rule("post_message").allow_self_approval is None  # unsaid: the global setting decides
    for bad, words in [
        ("tools:\n  x: {mode: sometimes}\n", "mode"),
        ("tools:\n  x: {colour: red}\n", "unknown keys"),
        ("tools:\n  x: {required_approvals: 0}\n", "required_approvals"),
        ("tools:\n  x: {allow_broadcast: maybe}\n", "allow_broadcast"),
        ("expires_after: soon\n", "duration"),
        ("nonsense: 1\n", "unknown keys"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load(bad)
    env = {"CHATOPS_TOOL_RUN_RUNBOOK": "deny", "CHATOPS_EXPIRES_AFTER": "30m"}
    from_env = Policy.from_env(env)
    assert from_env.mode("run_runbook") == "deny" and from_env.expires_after_s == 1800
