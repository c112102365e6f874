"""Which Slack channel a channel argument really names: ``C123``, ``<#C123|label>``, ``#name`` or ``name``.

A label is free text (``<#C0GENERAL|ops>`` reads "ops" and posts to #general) and a name can use look-alike
letters (``#оps`` with a Cyrillic о), so cards show what a reference resolves to — id and real name — and
posts go to that id, never to the text the model wrote.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

CACHE_S = 300.0  # conversations.list is Tier 2 (~20/min): names are cached, refreshed at most this often…
REFRESH_ON_MISS_S = 30.0  # …or on a miss, at most this often (a channel created a minute ago)
MAX_PAGES = 50  # 50 pages of 200: 10,000 channels, a bound on the loop
CHANNEL_MENTION = re.compile(r"<#([CG][A-Z0-9]+)(?:\|[^>]*)?>")
CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,}")
# What could be a channel name (Slack allows letters of any script); a look-alike simply names no channel.
CHANNEL_NAME = re.compile(r"[^\s#<>|@,]{1,80}")


@dataclass(frozen=True)
class Channel:
    id: str
    name: str  # without "#"; a DM has none
    is_private: bool = False
    is_im: bool = False

    @property
    def shown(self) -> str:
        return "a direct message" if self.is_im else f"#{self.name}"


class ChannelLookupFailed(Exception):
    """Slack could not be asked (rate limit, outage): the reference is neither confirmed nor refused."""


class Channels:
    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._by_id: dict[str, tuple[float, Channel | None]] = {}
        self._by_name: dict[str, str] = {}
        self._listed_at = -float("inf")

    async def resolve(self, ref: str) -> Channel | None:
        """The channel ``ref`` names, or None if there is no such channel the bot can see."""
        ref = ref.strip()
        mention = CHANNEL_MENTION.fullmatch(ref)
        if mention:
            return await self.by_id(mention.group(1))
        if CHANNEL_ID.fullmatch(ref):
            return await self.by_id(ref)
        name = (ref[1:] if ref.startswith("#") else ref).lower()  # Slack's channel names are lower case
        if not CHANNEL_NAME.fullmatch(name):
            return None  # not a name Slack allows: nothing to look up
        if time.monotonic() - self._listed_at > CACHE_S:
            await self._list()
        if name not in self._by_name and time.monotonic() - self._listed_at > REFRESH_ON_MISS_S:
            await self._list()
        found = self._by_name.get(name)
        return await self.by_id(found) if found else None

    async def by_id(self, channel_id: str) -> Channel | None:
        cached = self._by_id.get(channel_id)
        if cached and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        try:
            data = (await self._client.conversations_info(channel=channel_id))["channel"]
        except SlackApiError as exc:
            if exc.response.get("error") in ("channel_not_found", "invalid_channel"):
                self._by_id[channel_id] = (time.monotonic(), None)
                return None
            raise ChannelLookupFailed(str(exc.response.get("error"))) from None
        channel = _channel(data)
        self._by_id[channel_id] = (time.monotonic(), channel)
        return channel

    async def _list(self) -> None:
        names: dict[str, str] = {}
        cursor = ""
        try:
            for _ in range(MAX_PAGES):
                page = await self._client.conversations_list(
                    types="public_channel,private_channel", limit=200, cursor=cursor or None, exclude_archived=True
                )
                for data in page.get("channels") or []:
                    channel = _channel(data)
                    names[channel.name] = channel.id
                    self._by_id[channel.id] = (time.monotonic(), channel)
                cursor = (page.get("response_metadata") or {}).get("next_cursor") or ""
                if not cursor:
                    break
        except SlackApiError as exc:
            log.warning("could not list channels: %s", exc.response.get("error"))
            raise ChannelLookupFailed(str(exc.response.get("error"))) from None
        self._by_name, self._listed_at = names, time.monotonic()


def _channel(data: dict) -> Channel:  # type: ignore[type-arg]
    return Channel(
        id=data["id"],
        name=data.get("name") or "",
        is_private=bool(data.get("is_private")),
        is_im=bool(data.get("is_im")),
    )
