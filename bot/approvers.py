"""Who may decide an approval card, and who is an admin: Slack user IDs and user group IDs, never names."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from graphs.display import visible
from graphs.policy import Policy, ToolRule
from graphs.types import ReviewRequest

from .blocks import escape
from .errors import NotAnApprover

log = logging.getLogger(__name__)

GROUP_CACHE_S = 300.0  # usergroups.users.list is Tier 2 (~20/min): members are cached


class Directory:
    """Membership in a set of user IDs and user group IDs, with group members cached."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._handles: dict[str, tuple[float, str]] = {}

    async def member_of(self, user_id: str, ids: Iterable[str]) -> bool:
        ids = set(ids)
        if user_id in ids:
            return True
        for group in sorted(i for i in ids if i.startswith("S")):
            if user_id in await self._group_members(group):
                return True
        return False

    async def group_label(self, group_id: str) -> str:
        """A user group as plain text ("the @oncall group"): its handle from usergroups.list, cached; else its id."""
        if group_id not in self._handles or time.monotonic() - self._handles[group_id][0] >= GROUP_CACHE_S:
            try:
                response = await self._client.usergroups_list()
                for group in response.get("usergroups") or []:
                    self._handles[str(group.get("id"))] = (time.monotonic(), str(group.get("handle") or ""))
            except SlackApiError as exc:
                log.warning("could not list user groups: %s", exc.response.get("error"))
        handle = self._handles.get(group_id, (0.0, ""))[1]
        return f"the @{escape(visible(handle))} group" if handle else f"the user group `{group_id}`"

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
        """Raise NotAnApprover unless ``user_id`` may approve the calls at ``indexes``. The refusal says only what
        this person can do: untick what they may not approve when they may approve the rest, else who can."""
        chosen = list(indexes)
        barred = [n for n in chosen if await self._barred(user_id, requester, self.rules(request, [n])[0][1])]
        if not barred:
            return
        if len(barred) < len(chosen):
            names = list(dict.fromkeys(f"`{request['action_requests'][n]['name']}`" for n in barred))
            which = ", ".join(names)
            them = "it" if len(barred) == 1 else "them"
            why = (
                f"You asked for this run, so someone else has to approve {which}"
                if requester and user_id == requester
                else f"You are not an approver of {which}"
            )
            raise NotAnApprover(f"{why}; untick {them} to approve the rest. Nothing was changed.")
        raise NotAnApprover(await self._who_decides(user_id, requester, request, chosen))

    async def check_decider(self, user_id: str, requester: str | None, request: ReviewRequest) -> None:
        """Raise NotAnApprover unless ``user_id`` may approve at least one call of this card (before a dialog
        that offers approving is opened)."""
        everything = range(len(request["action_requests"]))
        for n in everything:
            if not await self._barred(user_id, requester, self.rules(request, [n])[0][1]):
                return
        raise NotAnApprover(await self._who_decides(user_id, requester, request, everything))

    async def check_reject(self, user_id: str, requester: str | None, request: ReviewRequest) -> None:
        """Raise NotAnApprover unless ``user_id`` may reject (veto) this card."""
        if not await self.may_reject(user_id, requester, self.rules(request)):
            who = await self._approver_names(request, range(len(request["action_requests"])), requester)
            asker = f" or <@{requester}>, who asked for it," if requester else ""
            raise NotAnApprover(f"Only {who}{asker} can reject this card; nothing was changed.")

    async def _barred(self, user_id: str, requester: str | None, rule: ToolRule) -> bool:
        # The tool's own word wins over the global setting, in both directions.
        may_self = self._allow_self if rule.allow_self_approval is None else rule.allow_self_approval
        if requester and user_id == requester and not may_self:
            return True
        allowed = rule.approvers or self._allowed
        return bool(allowed) and not await self._directory.member_of(user_id, allowed)

    async def _who_decides(
        self, user_id: str, requester: str | None, request: ReviewRequest, indexes: Iterable[int]
    ) -> str:
        who = await self._approver_names(request, indexes, requester)
        if requester and user_id == requester:
            return (
                f"You asked for this run, so someone else has to approve it: {who}. "
                "You can click Reject… to withdraw it; nothing was changed."
            )
        return f"Only {who} can approve this card; nothing was changed."

    async def _approver_names(self, request: ReviewRequest, indexes: Iterable[int], requester: str | None) -> str:
        """The people who may approve these calls, as a person would write them: users as mentions (an
        ephemeral mention notifies nobody), user groups by their handle as plain text, never a group ping."""
        ids: set[str] = set()
        anyone = False
        for _name, rule in self.rules(request, indexes):
            allowed = rule.approvers or self._allowed
            ids |= set(allowed)
            anyone = anyone or not allowed
        if anyone and not ids:
            return "any member other than the requester"
        names = [f"<@{i}>" for i in sorted(ids) if not i.startswith("S") and i != requester]
        names += [await self._directory.group_label(i) for i in sorted(ids) if i.startswith("S")]
        if anyone:
            names.append("any other member")
        if not names:
            return "nobody else (the policy names only the requester)"
        return ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]

    async def may_reject(self, user_id: str, requester: str | None, calls: Iterable[tuple[str, ToolRule]]) -> bool:
        """The requester may withdraw their own calls; otherwise an approver of any call may veto."""
        if requester and user_id == requester:
            return True
        for _name, rule in calls:
            allowed = rule.approvers or self._allowed
            if not allowed or await self._directory.member_of(user_id, allowed):
                return True
        return False
