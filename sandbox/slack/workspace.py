"""Workspace state of the local Slack: team, users, channels, messages and threads, ephemerals, views, triggers.

Pure in-memory and thread-safe (one re-entrant lock): the Web API runs on the server's thread while tests and
delivery code read and write from theirs. Every read returns deep copies so callers can never mutate the state.
Operations that Slack would refuse raise `SlackError(error)` with Slack's error string.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import blockkit

TRIGGER_TTL_S = 3.0  # Slack: a trigger_id is good for 3 s.
RESPONSE_URL_USES = 5  # Slack: 5 posts per response_url ...
RESPONSE_URL_TTL_S = 30 * 60.0  # ... within 30 minutes.
VIEW_STACK_MAX = 3

JSON = dict[str, Any]


class SlackError(Exception):
    """A refusal in Slack's words: `error` is the string the Web API puts in `{"ok": false, "error": ...}`."""

    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages or []


@dataclass
class Message:
    ts: str
    channel: str
    user: str
    text: str
    blocks: list[JSON] | None
    thread_ts: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    client_msg_id: str | None = None
    subtype: str | None = None
    edited: JSON | None = None  # Slack's {"user", "ts"} of the last edit
    reactions: dict[str, list[str]] = field(default_factory=dict)
    # Every text/blocks version the message had, the first being the original post.
    history: list[JSON] = field(default_factory=list)


class Workspace:
    """One Slack workspace with one installed app (the bot)."""

    def __init__(
        self,
        team_id: str = "T0LOCAL",
        team_domain: str = "local",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        app_id: str = "A0LOCAL",
        bot_name: str = "chatops",
    ) -> None:
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.bot_name = bot_name
        self._lock = threading.RLock()
        self.reset()

    # ------------------------------------------------------------------ setup

    def reset(self) -> None:
        """Back to the seed state: the bot, three people, #ops and #general, one user group."""
        with self._lock:
            self._users: dict[str, JSON] = {}
            self._channels: dict[str, JSON] = {}
            self._messages: dict[str, dict[str, Message]] = {}
            self._ephemerals: list[JSON] = []
            self._usergroups: dict[str, JSON] = {}
            self._views: dict[str, JSON] = {}
            self._stacks: dict[str, list[str]] = {}
            self._triggers: dict[str, JSON] = {}
            self._response_urls: dict[str, JSON] = {}
            self._ticks: dict[tuple[str, str, str], dict[tuple[str, str], list[JSON]]] = {}
            self._last_ts = 0
            self.add_user(self.bot_user_id, self.bot_name, is_bot=True)
            self.add_user("U0ALICE", "alice", is_admin=True, real_name="Alice Admin")
            self.add_user("U0BOB", "bob", real_name="Bob Builder")
            self.add_user("U0CAROL", "carol", real_name="Carol Ops")
            self.add_channel("ops")
            self.add_channel("general")
            self.add_usergroup("S0ONCALL", "oncall", ["U0ALICE"])

    def add_user(
        self, user_id: str, name: str, is_admin: bool = False, real_name: str | None = None, is_bot: bool = False
    ) -> JSON:
        with self._lock:
            user: JSON = {
                "id": user_id,
                "team_id": self.team_id,
                "name": name,
                "real_name": real_name or name,
                "deleted": False,
                "is_admin": is_admin,
                "is_owner": False,
                "is_bot": is_bot,
                "tz": "UTC",
                "profile": {"display_name": name, "real_name": real_name or name, "team": self.team_id},
            }
            if is_bot:
                user["profile"]["bot_id"] = self.bot_id
            self._users[user_id] = user
            return copy.deepcopy(user)

    def add_channel(self, name: str, is_private: bool = False) -> str:
        """Create `#name` and return its id (`C0NAME`, deterministic so tests can hard-code it)."""
        with self._lock:
            existing = self._channel_by_name(name)
            if existing:
                return existing
            base = "C0" + re.sub(r"[^A-Z0-9]", "", name.upper())[:9]
            cid, n = base, 1
            while cid in self._channels:
                n += 1
                cid = f"{base}{n}"
            self._channels[cid] = {
                "id": cid,
                "name": name,
                "is_channel": True,
                "is_group": False,
                "is_im": False,
                "is_private": is_private,
                "is_archived": False,
                "is_member": True,
                "created": int(time.time()),
            }
            self._messages[cid] = {}
            return cid

    def dm_channel(self, user: str) -> str:
        """The bot's DM channel with `user` (`D…`), opened on first use like conversations.open."""
        with self._lock:
            self.user(user)
            cid = "D" + user[1:]
            if cid not in self._channels:
                self._channels[cid] = {
                    "id": cid,
                    "is_channel": False,
                    "is_group": False,
                    "is_im": True,
                    "is_private": True,
                    "is_member": True,
                    "user": user,
                    "created": int(time.time()),
                }
                self._messages[cid] = {}
            return cid

    def add_usergroup(self, group_id: str, handle: str, members: list[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = {"id": group_id, "handle": handle, "users": list(members)}

    # ------------------------------------------------------------------ lookups

    def user(self, user_id: str) -> JSON:
        with self._lock:
            if user_id not in self._users:
                raise SlackError("user_not_found")
            return copy.deepcopy(self._users[user_id])

    def users(self) -> list[JSON]:
        with self._lock:
            return copy.deepcopy(list(self._users.values()))

    def usergroups(self) -> list[JSON]:
        with self._lock:
            return [
                {"id": g["id"], "handle": g["handle"], "name": g["handle"], "user_count": len(g["users"])}
                for g in self._usergroups.values()
            ]

    def usergroup_members(self, group_id: str) -> list[str]:
        with self._lock:
            if group_id not in self._usergroups:
                raise SlackError("no_such_subteam")
            return list(self._usergroups[group_id]["users"])

    def resolve_channel(self, ref: Any) -> str:
        """Channel id for an id, `#name`, `name`, or a user id (Slack posts to the DM then)."""
        with self._lock:
            if not isinstance(ref, str) or not ref:
                raise SlackError("channel_not_found")
            if ref in self._channels:
                return ref
            if ref in self._users:
                return self.dm_channel(ref)
            found = self._channel_by_name(ref.lstrip("#"))
            if not found:
                raise SlackError("channel_not_found")
            return found

    def channel(self, ref: str) -> JSON:
        with self._lock:
            return copy.deepcopy(self._channels[self.resolve_channel(ref)])

    def channels(self) -> list[JSON]:
        with self._lock:
            return copy.deepcopy(list(self._channels.values()))

    def _channel_by_name(self, name: str) -> str | None:
        return next((c["id"] for c in self._channels.values() if c.get("name") == name), None)

    # ------------------------------------------------------------------ messages

    def new_ts(self) -> str:
        """A message ts (`seconds.micros`), strictly increasing so ts order is post order."""
        with self._lock:
            now = max(int(time.time() * 1_000_000), self._last_ts + 1)
            self._last_ts = now
            return f"{now // 1_000_000}.{now % 1_000_000:06d}"

    def post_message(
        self,
        channel: str,
        user: str,
        text: str | None,
        blocks: list[JSON] | None = None,
        thread_ts: str | None = None,
        client_msg_id: str | None = None,
    ) -> JSON:
        """Store a new message (from the bot when `user` is the bot user) and return it in API shape."""
        with self._lock:
            cid = self.resolve_channel(channel)
            if thread_ts:
                parent = self._messages[cid].get(str(thread_ts))
                if parent is None:
                    raise SlackError("thread_not_found")
                # Replying to a reply threads under the root, as in Slack.
                thread_ts = parent.thread_ts or parent.ts
            is_bot = user == self.bot_user_id
            msg = Message(
                ts=self.new_ts(),
                channel=cid,
                user=user,
                text=text or "",
                blocks=blockkit.with_ids(blocks),
                thread_ts=thread_ts or None,
                bot_id=self.bot_id if is_bot else None,
                app_id=self.app_id if is_bot else None,
                client_msg_id=client_msg_id,
            )
            msg.history.append({"text": msg.text, "blocks": copy.deepcopy(msg.blocks), "at": msg.ts})
            self._messages[cid][msg.ts] = msg
            return self._api(msg)

    def update_message(
        self, channel: str, ts: str, text: str | None, blocks: list[JSON] | None, by: str | None = None
    ) -> JSON:
        """chat.update semantics: replace text and/or blocks, keep an edit history."""
        with self._lock:
            msg = self._find(channel, ts)
            if text is not None:
                msg.text = text
            if blocks is not None:
                msg.blocks = blockkit.with_ids(blocks)
            msg.edited = {"user": by or msg.user, "ts": self.new_ts()}
            msg.history.append({"text": msg.text, "blocks": copy.deepcopy(msg.blocks), "at": msg.edited["ts"]})
            return self._api(msg)

    def delete_message(self, channel: str, ts: str) -> None:
        with self._lock:
            msg = self._find(channel, ts)
            del self._messages[msg.channel][msg.ts]

    def react(self, channel: str, ts: str, name: str, user: str, add: bool) -> None:
        with self._lock:
            msg = self._find(channel, ts)
            users = msg.reactions.setdefault(name, [])
            if add:
                if user in users:
                    raise SlackError("already_reacted")
                users.append(user)
            else:
                if user not in users:
                    raise SlackError("no_reaction")
                users.remove(user)
                if not users:
                    del msg.reactions[name]

    def api_message(self, channel: str, ts: str) -> JSON:
        """A message as the Web API returns it (and as interaction payloads carry it)."""
        with self._lock:
            return self._api(self._find(channel, ts))

    def history(
        self, channel: str, limit: int = 100, oldest: str | None = None, latest: str | None = None
    ) -> list[JSON]:
        """conversations.history: top-level messages (and broadcast roots), newest first."""
        with self._lock:
            cid = self.resolve_channel(channel)
            top = [m for m in self._messages[cid].values() if m.thread_ts in (None, m.ts)]
            top = [
                m
                for m in top
                if (not oldest or float(m.ts) > float(oldest)) and (not latest or float(m.ts) < float(latest))
            ]
            top.sort(key=lambda m: float(m.ts), reverse=True)
            return [self._api(m) for m in top[: max(1, limit)]]

    def replies(self, channel: str, ts: str) -> list[JSON]:
        """conversations.replies: the parent first, then its replies oldest first."""
        with self._lock:
            root = self._find(channel, ts)
            root_ts = root.thread_ts or root.ts
            thread = [m for m in self._messages[root.channel].values() if m.ts == root_ts or m.thread_ts == root_ts]
            thread.sort(key=lambda m: float(m.ts))
            return [self._api(m) for m in thread]

    # Test-facing views of messages: flat dicts with the number of edits in `edited`.

    def messages(self, channel: str, thread_ts: str | None = None) -> list[JSON]:
        """Top-level messages, or a thread's replies (without the parent), in ts order."""
        with self._lock:
            cid = self.resolve_channel(channel)
            if thread_ts is None:
                found = [m for m in self._messages[cid].values() if m.thread_ts in (None, m.ts)]
            else:
                found = [m for m in self._messages[cid].values() if m.thread_ts == thread_ts and m.ts != thread_ts]
            found.sort(key=lambda m: float(m.ts))
            return [self._public(m) for m in found]

    def message(self, channel: str, ts: str) -> JSON | None:
        with self._lock:
            try:
                return self._public(self._find(channel, ts))
            except SlackError:
                return None

    def edit_history(self, channel: str, ts: str) -> list[JSON]:
        """Every version ({text, blocks, at}) the message had, the original first."""
        with self._lock:
            return copy.deepcopy(self._find(channel, ts).history)

    def _find(self, channel: str, ts: str) -> Message:
        cid = self.resolve_channel(channel)
        msg = self._messages[cid].get(str(ts))
        if msg is None:
            if any(e["message_ts"] == str(ts) for e in self._ephemerals):
                raise SlackError("cant_update_message")
            raise SlackError("message_not_found")
        return msg

    def _replies_of(self, msg: Message) -> list[Message]:
        return [m for m in self._messages[msg.channel].values() if m.thread_ts == msg.ts and m.ts != msg.ts]

    def _api(self, msg: Message) -> JSON:
        out: JSON = {"type": "message", "ts": msg.ts, "user": msg.user, "text": msg.text, "team": self.team_id}
        if msg.blocks is not None:
            out["blocks"] = copy.deepcopy(msg.blocks)
        for key in ("bot_id", "app_id", "client_msg_id", "subtype", "thread_ts"):
            if getattr(msg, key):
                out[key] = getattr(msg, key)
        if msg.edited:
            out["edited"] = dict(msg.edited)
        if msg.reactions:
            out["reactions"] = [{"name": n, "users": list(u), "count": len(u)} for n, u in msg.reactions.items()]
        replies = self._replies_of(msg)
        if replies:
            out["thread_ts"] = msg.ts
            out["reply_count"] = len(replies)
            out["reply_users"] = sorted({r.user for r in replies})
            out["latest_reply"] = max(r.ts for r in replies)
        return out

    def _public(self, msg: Message) -> JSON:
        return {
            "ts": msg.ts,
            "channel": msg.channel,
            "user": msg.user,
            "bot_id": msg.bot_id,
            "text": msg.text,
            "blocks": copy.deepcopy(msg.blocks),
            "thread_ts": msg.thread_ts,
            "edited": len(msg.history) - 1,
            "reactions": {n: list(u) for n, u in msg.reactions.items()},
            "client_msg_id": msg.client_msg_id,
            "reply_count": len(self._replies_of(msg)),
        }

    # ------------------------------------------------------------------ ephemerals

    def post_ephemeral(
        self,
        channel: str,
        user: str,
        text: str | None,
        blocks: list[JSON] | None = None,
        thread_ts: str | None = None,
        source: str = "chat.postEphemeral",
    ) -> JSON:
        """An ephemeral message only `user` sees; `source` says who produced it (API, slash ack, response_url)."""
        with self._lock:
            cid = self.resolve_channel(channel)
            self.user(user)
            record = {
                "message_ts": self.new_ts(),
                "channel": cid,
                "user": user,
                "text": text or "",
                "blocks": blockkit.with_ids(blocks),
                "thread_ts": thread_ts,
                "source": source,
                "deleted": False,
            }
            self._ephemerals.append(record)
            return copy.deepcopy(record)

    def replace_ephemeral(self, message_ts: str, text: str | None, blocks: list[JSON] | None, delete: bool) -> None:
        with self._lock:
            for e in self._ephemerals:
                if e["message_ts"] == message_ts:
                    if delete:
                        e["deleted"] = True
                    else:
                        e["text"] = text or ""
                        e["blocks"] = blockkit.with_ids(blocks)
                    return
            raise SlackError("message_not_found")

    def ephemeral(self, message_ts: str) -> JSON | None:
        with self._lock:
            return copy.deepcopy(next((e for e in self._ephemerals if e["message_ts"] == message_ts), None))

    def ephemerals(self, user: str | None = None, include_deleted: bool = False) -> list[JSON]:
        with self._lock:
            return copy.deepcopy(
                [
                    e
                    for e in self._ephemerals
                    if (user is None or e["user"] == user) and (include_deleted or not e["deleted"])
                ]
            )

    # ------------------------------------------------------------------ checkbox ticks (client-side state)

    def ticks(self, user: str, channel: str, ts: str, block_id: str, action_id: str) -> list[JSON]:
        """The options `user` has ticked on one checkbox group; the element's initial_options until they touch it.

        Keyed by (block_id, action_id) like Slack's client: an updated message that keeps the ids keeps the ticks.
        """
        with self._lock:
            key = (user, self.resolve_channel(channel), str(ts))
            if (block_id, action_id) in self._ticks.get(key, {}):
                return copy.deepcopy(self._ticks[key][(block_id, action_id)])
            el = self._element(user, channel, ts, block_id, action_id)
            return copy.deepcopy(el.get("initial_options", []) if el else [])

    def set_tick(
        self, user: str, channel: str, ts: str, block_id: str, action_id: str, value: str, checked: bool
    ) -> list[JSON]:
        with self._lock:
            el = self._element(user, channel, ts, block_id, action_id)
            if el is None or el.get("type") != "checkboxes":
                raise SlackError("element_not_found")
            options = el.get("options", [])
            if value not in {o.get("value") for o in options}:
                raise SlackError("option_not_found")
            chosen = {o["value"] for o in self.ticks(user, channel, ts, block_id, action_id)}
            chosen = chosen | {value} if checked else chosen - {value}
            # Slack lists selected options in the element's order, not in click order.
            selected = [copy.deepcopy(o) for o in options if o.get("value") in chosen]
            key = (user, self.resolve_channel(channel), str(ts))
            self._ticks.setdefault(key, {})[(block_id, action_id)] = selected
            return copy.deepcopy(selected)

    def state_values(self, user: str, channel: str, ts: str) -> JSON:
        """`state.values` of a block_actions payload: the checkbox ticks this user currently has on the message."""
        with self._lock:
            values: JSON = {}
            for block, el in blockkit.iter_elements(self._blocks_for(user, channel, ts)):
                if el.get("type") == "checkboxes":
                    values.setdefault(block["block_id"], {})[el["action_id"]] = {
                        "type": "checkboxes",
                        "selected_options": self.ticks(user, channel, ts, block["block_id"], el["action_id"]),
                    }
            return values

    def _blocks_for(self, user: str, channel: str, ts: str) -> list[JSON]:
        eph = next((e for e in self._ephemerals if e["message_ts"] == str(ts) and e["user"] == user), None)
        if eph is not None:
            return eph["blocks"] or []
        return self._find(channel, ts).blocks or []

    def _element(self, user: str, channel: str, ts: str, block_id: str, action_id: str) -> JSON | None:
        for block, el in blockkit.iter_elements(self._blocks_for(user, channel, ts)):
            if block.get("block_id") == block_id and el.get("action_id") == action_id:
                return el
        return None

    # ------------------------------------------------------------------ triggers and response_urls

    def new_trigger(self, user: str) -> str:
        with self._lock:
            trigger = f"{int(time.time())}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
            self._triggers[trigger] = {"user": user, "created": time.monotonic(), "used": False}
            return trigger

    def use_trigger(self, trigger_id: Any) -> str:
        """Consume a trigger_id for views.open/push and return its user; Slack's errors otherwise."""
        with self._lock:
            t = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
            if t is None:
                raise SlackError("invalid_trigger_id")
            if time.monotonic() - t["created"] > TRIGGER_TTL_S:
                raise SlackError("expired_trigger_id")
            if t["used"]:
                raise SlackError("trigger_exchanged")
            t["used"] = True
            return str(t["user"])

    def age_trigger(self, trigger_id: str, seconds: float) -> None:
        """Make a trigger look `seconds` older (tests of expiry without sleeping)."""
        with self._lock:
            self._triggers[trigger_id]["created"] -= seconds

    def new_response_url_token(self, context: JSON) -> str:
        with self._lock:
            token = secrets.token_urlsafe(12)
            self._response_urls[token] = {**copy.deepcopy(context), "uses": 0, "created": time.monotonic()}
            return token

    def use_response_url(self, token: str) -> JSON:
        with self._lock:
            ctx = self._response_urls.get(token)
            if ctx is None:
                raise SlackError("invalid_url")
            if time.monotonic() - ctx["created"] > RESPONSE_URL_TTL_S:
                raise SlackError("expired_url")
            if ctx["uses"] >= RESPONSE_URL_USES:
                raise SlackError("used_url")
            ctx["uses"] += 1
            return copy.deepcopy(ctx)

    # ------------------------------------------------------------------ views (modals)

    def open_view(self, user: str, view: JSON) -> JSON:
        """views.open: a new modal stack for `user` (replacing any open one)."""
        with self._lock:
            self.clear_views(user)
            record = self._new_view(user, view, previous=None)
            self._stacks[user] = [record["view"]["id"]]
            return copy.deepcopy(record["view"])

    def push_view(self, user: str, view: JSON) -> JSON:
        with self._lock:
            stack = self._stacks.get(user) or []
            if not stack:
                raise SlackError("not_found")
            if len(stack) >= VIEW_STACK_MAX:
                raise SlackError("push_limit_reached")
            record = self._new_view(user, view, previous=stack[-1])
            stack.append(record["view"]["id"])
            return copy.deepcopy(record["view"])

    def update_view(
        self, view: JSON, view_id: str | None = None, external_id: str | None = None, hash_: str | None = None
    ) -> JSON:
        with self._lock:
            record = self._view_record(view_id, external_id)
            old = record["view"]
            if hash_ and hash_ != old["hash"]:
                raise SlackError("hash_conflict")
            record["view"] = self._view_body(view, old["id"], old["root_view_id"], old["previous_view_id"])
            record["errors"] = {}
            return copy.deepcopy(record["view"])

    def close_view(self, view_id: str) -> None:
        """Pop one view (a submission acked with an empty body); the modal closes when the stack empties."""
        with self._lock:
            record = self._view_record(view_id, None)
            record["is_open"] = False
            stack = self._stacks.get(record["user"], [])
            if view_id in stack:
                stack.remove(view_id)

    def clear_views(self, user: str) -> None:
        """Close the user's whole modal stack (`response_action: clear`, the close button, or a new views.open)."""
        with self._lock:
            for vid in self._stacks.pop(user, []):
                self._views[vid]["is_open"] = False

    def set_view_errors(self, view_id: str, errors: JSON) -> None:
        with self._lock:
            self._view_record(view_id, None)["errors"] = copy.deepcopy(errors)

    def view(self, view_id: str) -> JSON:
        """A view record: {"view": <Slack view>, "user", "is_open", "errors"}."""
        with self._lock:
            return copy.deepcopy(self._view_record(view_id, None))

    def views(self, user: str | None = None, open_only: bool = False) -> list[JSON]:
        with self._lock:
            return copy.deepcopy(
                [
                    r
                    for r in self._views.values()
                    if (user is None or r["user"] == user) and (not open_only or r["is_open"])
                ]
            )

    def _view_record(self, view_id: str | None, external_id: str | None) -> JSON:
        if view_id and view_id in self._views:
            return self._views[view_id]
        if external_id:
            for r in self._views.values():
                if r["view"].get("external_id") == external_id:
                    return r
        raise SlackError("not_found")

    def _new_view(self, user: str, view: JSON, previous: str | None) -> JSON:
        vid = "V" + secrets.token_hex(5).upper()
        root = self._views[previous]["view"]["root_view_id"] if previous else vid
        record = {"view": self._view_body(view, vid, root, previous), "user": user, "is_open": True, "errors": {}}
        self._views[vid] = record
        return record

    def _view_body(self, view: JSON, vid: str, root: str, previous: str | None) -> JSON:
        body = copy.deepcopy(view)
        body["blocks"] = blockkit.with_ids(body.get("blocks") or [])
        body.update(
            {
                "id": vid,
                "team_id": self.team_id,
                "app_id": self.app_id,
                "bot_id": self.bot_id,
                "app_installed_team_id": self.team_id,
                "root_view_id": root,
                "previous_view_id": previous,
                "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
                "state": {"values": {}},
            }
        )
        for key, default in (
            ("private_metadata", ""),
            ("callback_id", ""),
            ("external_id", ""),
            ("clear_on_close", False),
            ("notify_on_close", False),
        ):
            body.setdefault(key, default)
        return body
