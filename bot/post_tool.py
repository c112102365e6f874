"""The post_message tool's Slack side: where a post really goes, whom it notifies, and what its links open.

``assess`` runs when the model proposes a post, so the approval card can say it: "posts to #general
(C0GENERAL)", "the label says ops", "@channel notifies nobody", "a link shows X but opens Y". ``post`` sends
it to the resolved channel id with broadcasts neutralised unless the tool's policy says ``allow_broadcast``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from graphs.display import visible
from graphs.policy import ToolRule
from graphs.types import Assessment

from .blocks import broadcasts, neutralize_broadcasts
from .channels import ChannelLookupFailed, Channels

LABELLED_CHANNEL = re.compile(r"<#[CG][A-Z0-9]+\|([^>]*)>")
LABELLED_LINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^|>\s]*)\|([^>]*)>")
USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
MAX_FACTS_OF_A_KIND = 5


class PostTool:
    def __init__(self, client: AsyncWebClient, channels: Channels, rule: Callable[[], ToolRule]) -> None:
        self._client = client
        self._channels = channels
        self._rule = rule  # the post_message policy rule (allow_broadcast), read at each use

    async def assess(self, args: dict[str, Any]) -> Assessment:
        ref, text = str(args.get("channel", "")), str(args.get("text", ""))
        try:
            channel = await self._channels.resolve(ref)
        except ChannelLookupFailed:
            return Assessment(
                "deny", reason=f"Slack could not say which channel {visible(ref)!r} is right now.", field="channel"
            )
        if channel is None:
            return Assessment(
                "deny", reason=f"There is no channel {visible(ref)!r} the bot can post to.", field="channel"
            )
        facts = [
            f"posts to {channel.shown} ({channel.id})"
            + (", a private channel" if channel.is_private and not channel.is_im else "")
        ]
        labelled = LABELLED_CHANNEL.fullmatch(ref.strip())
        if labelled and labelled.group(1).lstrip("#") != channel.name:
            facts.append(
                f"⚠ written as “{ref.strip()}”: it reads “{labelled.group(1)}”, but the post goes to "
                f"{channel.shown} ({channel.id})"
            )
        found = broadcasts(text)
        if found and self._rule().allow_broadcast:
            facts.append(f"⚠ notifies everyone it names: {', '.join(dict.fromkeys(found))}")
        elif found:
            facts.append(
                f"{', '.join(dict.fromkeys(found))} will be posted as plain words and notify nobody "
                "(this tool's policy does not allow broadcasts)"
            )
        for url, label in LABELLED_LINK.findall(text)[:MAX_FACTS_OF_A_KIND]:
            facts.append(f"⚠ a link shows “{label}” but opens {url}" if label.strip() != url else f"links to {url}")
        for user in list(dict.fromkeys(USER_MENTION.findall(text)))[:MAX_FACTS_OF_A_KIND]:
            facts.append(f"mentions user {user}")
        return Assessment("auto", tuple(facts))

    async def post(self, channel_ref: str, text: str) -> str:
        """Post as the bot to the channel the reference resolves to (the card showed which)."""
        try:
            channel = await self._channels.resolve(channel_ref)
        except ChannelLookupFailed as exc:
            raise RuntimeError(
                f"Slack could not say which channel {channel_ref!r} is ({exc}); nothing was posted"
            ) from None
        if channel is None:
            raise RuntimeError(f"there is no channel {channel_ref!r} the bot can post to; nothing was posted")
        if not self._rule().allow_broadcast:
            text = neutralize_broadcasts(text)
        try:
            response = await self._client.chat_postMessage(channel=channel.id, text=text)
        except SlackApiError as exc:
            raise RuntimeError(f"Slack refused the post to {channel.shown}: {exc.response.get('error')}") from None
        return f"posted to {channel.shown} ({channel.id}), message ts {response['ts']}"
