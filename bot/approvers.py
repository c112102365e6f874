"""Who may decide an approval card, and who is an admin: Slack user IDs and user group IDs, never names."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from graphs.policy import Policy, ToolRule
from graphs.types import ReviewRequest

from .errors import NotAnApprover

log = logging.getLogger(__name__)

GROUP_CACHE_S = 300.0  # usergroups.users.list is Tier 2 (~20/min): members are cached


class Directory:
    """Membership in a set of user IDs and user group IDs, with group members cached."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def member_of(self, user_id: str, ids: Iterable[str]) -> bool:
        ids = set(ids)
        if user_id in ids:
            return True
        for group in sorted(i for i in ids if i.startswith("S")):
            if user_id in await self._group_members(group):
                return True
        return False

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


class Approvers:
    """Who may approve or reject which calls of a card, and how many distinct approvers a card needs: the
    policy's per-tool rules, the global CHATOPS_APPROVERS and CHATOPS_ALLOW_SELF_APPROVAL."""

    def __init__(
        self, directory: Directory, allowed: frozenset[str], policy: Policy, *, allow_self_approval: bool = False
    ) -> None:
        self._directory = directory
        self._allowed = allowed  # CHATOPS_APPROVERS; empty: any member except the requester
        self._policy = policy
        self._allow_self = allow_self_approval

    def rules(self, request: ReviewRequest, indexes: Iterable[int] | None = None) -> list[tuple[str, ToolRule]]:
        """(tool name, its rule) for the calls at ``indexes`` of a review (default: all of them)."""
        actions = request["action_requests"]
        chosen = range(len(actions)) if indexes is None else indexes
        return [(actions[n]["name"], self._policy.rule(actions[n]["name"])) for n in chosen]

    def required(self, request: ReviewRequest, indexes: Iterable[int] | None = None) -> int:
        """Distinct approvers a card needs: the highest among the calls at ``indexes``."""
        return max((rule.required_approvals for _, rule in self.rules(request, indexes)), default=1)

    async def check_approve(
        self, user_id: str, requester: str | None, request: ReviewRequest, indexes: Iterable[int]
    ) -> None:
        """Raise NotAnApprover unless ``user_id`` may approve the calls at ``indexes``."""
        refusal = await self.refusal(user_id, requester, self.rules(request, indexes))
        if refusal:
            raise NotAnApprover(refusal)

    async def check_reject(self, user_id: str, requester: str | None, request: ReviewRequest) -> None:
        """Raise NotAnApprover unless ``user_id`` may reject (veto) this card."""
        if not await self.may_reject(user_id, requester, self.rules(request)):
            raise NotAnApprover("You are not an approver of any call on this card.")

    async def refusal(self, user_id: str, requester: str | None, calls: Iterable[tuple[str, ToolRule]]) -> str | None:
        """Why ``user_id`` may not approve these calls of ``requester``'s run, or None if they may."""
        for name, rule in calls:
            # The tool's own word wins over the global setting, in both directions.
            may_self = self._allow_self if rule.allow_self_approval is None else rule.allow_self_approval
            if requester and user_id == requester and not may_self:
                return f"You asked for this run, so someone else has to approve `{name}`."
            allowed = rule.approvers or self._allowed
            if allowed and not await self._directory.member_of(user_id, allowed):
                source = "its policy" if rule.approvers else "CHATOPS_APPROVERS"
                return f"You are not on the list of approvers for `{name}` ({source}); untick it or ask an approver."
        return None

    async def may_reject(self, user_id: str, requester: str | None, calls: Iterable[tuple[str, ToolRule]]) -> bool:
        """The requester may withdraw their own calls; otherwise an approver of any call may veto."""
        if requester and user_id == requester:
            return True
        for _name, rule in calls:
            allowed = rule.approvers or self._allowed
            if not allowed or await self._directory.member_of(user_id, allowed):
                return True
        return False
