"""Who may decide an approval card: Slack user IDs and user group IDs, never display names."""

from __future__ import annotations

import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

GROUP_CACHE_S = 300.0  # usergroups.users.list is Tier 2 (~20/min): members are cached


class Approvers:
    def __init__(
        self, client: AsyncWebClient, allowed: frozenset[str], *, allow_self_approval: bool = False
    ) -> None:
        self._client = client
        self._users = frozenset(i for i in allowed if not i.startswith("S"))
        self._groups = frozenset(i for i in allowed if i.startswith("S"))
        self._allow_self = allow_self_approval
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def refusal(self, user_id: str, requester: str | None) -> str | None:
        """Why ``user_id`` may not decide a card of ``requester``'s run, or None if they may."""
        if requester and user_id == requester and not self._allow_self:
            return "You asked for this run, so someone else has to approve it."
        if not self._users and not self._groups:
            return None
        if user_id in self._users:
            return None
        for group in self._groups:
            if user_id in await self._group_members(group):
                return None
        return "You are not on the list of approvers for this bot (CHATOPS_APPROVERS)."

    async def _group_members(self, group_id: str) -> frozenset[str]:
        cached = self._members.get(group_id)
        if cached and time.monotonic() - cached[0] < GROUP_CACHE_S:
            return cached[1]
        try:
            response = await self._client.usergroups_users_list(usergroup=group_id)
            members = frozenset(response.get("users") or [])
        except SlackApiError as exc:
            log.warning("could not read members of user group %s: %s", group_id, exc.response.get("error"))
            members = cached[1] if cached else frozenset()
        self._members[group_id] = (time.monotonic(), members)
        return members
