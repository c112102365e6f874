"""What the bot tests share: starting the real bot against the local Slack, and reading Slack like a person."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sandbox.openai_server import rule
from sandbox.processes import BotProcess
from sandbox.slack import LocalSlack
from sandbox.slack.reading import all_text, header_of

SECRET = "test-signing-secret"
OPS = "C0OPS"
REQUESTER, APPROVER, OTHER = "U0ALICE", "U0BOB", "U0CAROL"
TASK = "check the API, run the disk-usage runbook and post a summary to #ops"


def bot_env(slack: LocalSlack, redis_url: str, model_url: str, runbooks_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "test-key",
        "CHATOPS_MODEL": "scripted",
        "CHATOPS_RUNBOOKS_DIR": str(runbooks_dir),
        "CHATOPS_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}:",  # each test its own keys and chat.update budget
        **extra,
    }


def start_bot(slack: LocalSlack, env: dict[str, str], log_path: Path) -> BotProcess:
    bot = BotProcess(env, log_path).start()
    slack.bot_url = bot.url
    return bot


def propose(model: Any, *calls: dict[str, Any], after: str = "Done as approved.") -> None:
    """The model proposes ``calls`` for any request, then reports ``after``."""
    model.reset(
        [
            rule({"tool_calls": list(calls)}, has_tool_results=False),
            rule({"text": after}, has_tool_results=True),
        ]
    )


def script_three_calls(model: Any) -> None:
    """The model proposes a runbook, a recording runbook and a post; then reports."""
    model.reset(
        [
            rule(
                {
                    "text": "Let me run the disk-usage runbook, record it, and post to #ops.",
                    "tool_calls": [
                        {"name": "run_runbook", "args": {"name": "disk-usage"}},
                        {"name": "run_runbook", "args": {"name": "record"}},
                        {"name": "post_message", "args": {"channel": "#ops", "text": "Disk at 42%."}},
                    ],
                    "chunk_delay": 0.02,
                },
                last_user_contains="disk-usage runbook",
                has_tool_results=False,
            ),
            rule({"text": "Finished: disk usage is 42%."}, has_tool_results=True),
        ]
    )


class Thread:
    """A Slack thread as a person sees it: the bot's progress message and its approval cards."""

    def __init__(self, slack: LocalSlack, channel: str, ts: str) -> None:
        self.slack, self.channel, self.ts = slack, channel, ts

    def replies(self) -> list[dict[str, Any]]:
        return self.slack.messages(self.channel, self.ts)

    def progress(self) -> dict[str, Any] | None:
        bot = [m for m in self.replies() if m.get("user") == "U0BOT" or m.get("bot_id")]
        return bot[0] if bot else None

    def cards(self) -> list[dict[str, Any]]:
        return [
            m
            for m in self.replies()
            if header_of(m) in ("Approval needed", "Approval decided") or header_of(m).startswith("Approval")
        ]

    def card(self) -> dict[str, Any] | None:
        open_cards = [m for m in self.replies() if header_of(m) == "Approval needed"]
        return open_cards[-1] if open_cards else None

    async def wait_card(self, timeout: float = 20) -> dict[str, Any]:
        await self.slack.wait_for(self.card, timeout=timeout, description="an approval card in the thread")
        return self.card()  # type: ignore[return-value]

    async def wait_decided(self, card_ts: str, timeout: float = 20) -> dict[str, Any]:
        """The card once rewritten as decided (its edit may land just after the progress message's)."""

        def decided() -> bool:
            return header_of(self.slack.message(self.channel, card_ts) or {}) == "Approval decided"

        await self.slack.wait_for(decided, timeout=timeout, description="the card to say Approval decided")
        return self.slack.message(self.channel, card_ts)  # type: ignore[return-value]

    async def wait_progress(self, words: str, timeout: float = 20) -> dict[str, Any]:
        def shows() -> bool:
            progress = self.progress()
            return bool(progress and words in all_text(progress))

        await self.slack.wait_for(shows, timeout=timeout, description=f"the progress message to say {words!r}")
        return self.progress()  # type: ignore[return-value]


def card_value(card: dict[str, Any]) -> str:
    """What the card's buttons carry: ``<run id>:<interrupt id>``."""
    return next(
        e["value"]
        for b in card["blocks"]
        if b.get("type") == "actions"
        for e in b["elements"]
        if e.get("action_id") == "approve"
    )


def checkbox_block(card: dict[str, Any], value: str) -> tuple[str, str]:
    """(block id, action id) of the card's checkbox for the call ``value`` ("0" is the first call)."""
    for block in card["blocks"]:
        for element in block.get("elements") or []:
            if element.get("type") == "checkboxes" and any(o["value"] == value for o in element["options"]):
                return block["block_id"], element["action_id"]
    raise AssertionError(f"the card has no checkbox for call {value}")


async def mention(slack: LocalSlack, text: str, user: str = REQUESTER, channel: str = OPS) -> Thread:
    deliveries = await slack.post_user_message(user, channel, f"<@U0BOT> {text}")
    assert all(d.status == 200 for d in deliveries), [(d.status, d.body) for d in deliveries]
    root = [m for m in slack.messages(channel) if m.get("user") == user][-1]
    return Thread(slack, channel, root["ts"])
