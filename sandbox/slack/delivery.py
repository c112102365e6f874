"""Delivery side of the local Slack: builds Slack-shaped events, interactions and slash commands, signs them and
POSTs them to the bot over real HTTP, then applies what Slack would do with the bot's answer.

When the bot uses Socket Mode (see socket_mode.py), the same payloads travel as envelopes over its WebSocket
instead, and the envelope's ack payload stands in for the HTTP response body: one path builds the payload, one
`_send` picks the transport, and the same code applies the answer.

Deliveries run on the caller's event loop (a fresh aiohttp session per POST), never on the server's loop, so a
test can await them while the bot it drives calls the Web API served from the other thread.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp

from . import blockkit
from .calllog import CallLog
from .signing import signed_headers
from .transport import Delivery, SocketTransport
from .workspace import JSON, SlackError, Workspace

SLACK_USER_AGENT = "Slackbot 1.0 (+https://api.slack.com/robots)"
FORM = "application/x-www-form-urlencoded"
# Interactions whose ack may carry an answer (response_action, options): Socket Mode says so on the envelope.
ANSWERING_INTERACTIONS = frozenset({"view_submission", "block_suggestion"})


class Deliverer:
    def __init__(
        self,
        workspace: Workspace,
        log: CallLog,
        signing_secret: str,
        bot_url: Callable[[], str | None],
        base_url: Callable[[], str],
        verification_token: str = "local-verification-token",
        timeout: float = 3.0,
    ) -> None:
        self.ws = workspace
        self.log = log
        self.signing_secret = signing_secret
        self._bot_url = bot_url
        self._base_url = base_url
        self.verification_token = verification_token
        self.timeout = timeout
        self.socket: SocketTransport | None = None  # set by LocalSlack: Socket Mode delivery when the bot uses it

    # ------------------------------------------------------------------ transport

    async def _post(
        self,
        kind: str,
        body: bytes,
        content_type: str | None,
        *,
        request: Any,
        sign: bool = True,
        timestamp: int | str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Delivery:
        url = self._bot_url()
        if not url:
            raise RuntimeError("bot_url is not set: give LocalSlack(bot_url=...) or set slack.bot_url")
        headers = {"User-Agent": SLACK_USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        if sign:
            headers.update(signed_headers(self.signing_secret, body, timestamp))
        headers.update(extra_headers or {})
        started = time.perf_counter()
        status, resp_headers, text, error = 0, {}, "", None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, data=body, headers=headers) as resp:
                    status, resp_headers, text = resp.status, dict(resp.headers), await resp.text()
        except TimeoutError:
            error = "http_timeout"  # Slack's X-Slack-Retry-Reason for a bot that did not answer in time
        except aiohttp.ClientError as e:
            error = f"connection_failed: {e}"
        delivery = Delivery(
            kind,
            status,
            resp_headers,
            text,
            round((time.perf_counter() - started) * 1000, 2),
            request=request,
            error=error,
        )
        self.log.add(
            "delivery",
            method=kind,
            request={"headers": headers, "body": request},
            status=status,
            response={"headers": resp_headers, "body": text},
            latency_ms=delivery.latency_ms,
            error=error,
        )
        return delivery

    async def _send(
        self,
        kind: str,
        payload: JSON,
        http_body: bytes,
        content_type: str,
        *,
        envelope_type: str,
        accepts_response_payload: bool = False,
        retry: tuple[int, str] | None = None,
    ) -> Delivery:
        """Deliver `payload` the way the bot listens: as a Socket Mode envelope while it uses Socket Mode, else as a
        signed POST of `http_body`. `retry` = (attempt, reason) for Slack's redeliveries of an event."""
        if self.socket is not None and self.socket.wanted():
            attempt, reason = retry or (0, "")
            return await self.socket.deliver(
                kind,
                envelope_type,
                payload,
                accepts_response_payload=accepts_response_payload,
                retry_attempt=attempt,
                retry_reason=reason,
            )
        extra = {"X-Slack-Retry-Num": str(retry[0]), "X-Slack-Retry-Reason": retry[1]} if retry else None
        return await self._post(kind, http_body, content_type, request=payload, extra_headers=extra)

    async def _send_payload(self, payload: JSON) -> Delivery:
        # Over HTTP, interactions arrive as a form with one field, `payload`, holding the JSON.
        return await self._send(
            payload["type"],
            payload,
            urlencode({"payload": json.dumps(payload)}).encode(),
            FORM,
            envelope_type="interactive",
            accepts_response_payload=payload["type"] in ANSWERING_INTERACTIONS,
        )

    async def deliver_raw(
        self,
        body: bytes | str,
        headers: dict[str, str] | None = None,
        sign: bool = True,
        timestamp: int | str | None = None,
    ) -> Delivery:
        """POST `body` as is (signed unless `sign=False`), for tests of signatures, staleness and bad payloads.
        Always over HTTP, in Socket Mode too."""
        raw = body.encode() if isinstance(body, str) else body
        content_type = "application/json" if raw.lstrip().startswith(b"{") else "application/x-www-form-urlencoded"
        extra = dict(headers or {})
        if any(k.lower() == "content-type" for k in extra):
            content_type = None  # type: ignore[assignment]
        return await self._post(
            "raw",
            raw,
            content_type,
            request=raw.decode(errors="replace"),
            sign=sign,
            timestamp=timestamp,
            extra_headers=extra,
        )

    # ------------------------------------------------------------------ events

    def envelope(self, event: JSON) -> JSON:
        """An Events API `event_callback` envelope around `event`, with a fresh event_id."""
        return {
            "token": self.verification_token,
            "team_id": self.ws.team_id,
            "context_team_id": self.ws.team_id,
            "api_app_id": self.ws.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(5).upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.ws.team_id,
                    "user_id": self.ws.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-" + secrets.token_urlsafe(24),
        }

    async def deliver_event(
        self, envelope: JSON, retry_num: int | None = None, retry_reason: str | None = None
    ) -> Delivery:
        """(Re)deliver an envelope; Slack's retries keep the event_id and add the X-Slack-Retry-* headers (in Socket
        Mode: the envelope's retry_attempt and retry_reason)."""
        retry = (retry_num, retry_reason or "http_timeout") if retry_num is not None else None
        return await self._send(
            envelope["event"].get("type", "event"),
            envelope,
            json.dumps(envelope).encode(),
            "application/json",
            envelope_type="events_api",
            retry=retry,
        )

    async def post_user_message(
        self, user: str, channel: str, text: str, thread_ts: str | None = None
    ) -> list[Delivery]:
        """A person posts: store the message, then deliver `message` (+ `app_mention` if the bot is mentioned)."""
        channel_info = self.ws.channel(channel)
        msg = self.ws.post_message(channel_info["id"], user, text, thread_ts=thread_ts, client_msg_id=str(uuid.uuid4()))
        is_im = bool(channel_info.get("is_im"))
        base: JSON = {
            "user": user,
            "text": text,
            "ts": msg["ts"],
            "team": self.ws.team_id,
            "channel": channel_info["id"],
            "event_ts": msg["ts"],
            "client_msg_id": msg["client_msg_id"],
        }
        if msg.get("thread_ts"):
            base["thread_ts"] = msg["thread_ts"]
            base["parent_user_id"] = self.ws.api_message(channel_info["id"], msg["thread_ts"])["user"]
        deliveries = [
            await self.deliver_event(
                self.envelope({"type": "message", **base, "channel_type": "im" if is_im else "channel"})
            )
        ]
        # Slack sends app_mention for channels only; a DM reaches the app as message.im.
        if f"<@{self.ws.bot_user_id}>" in text and not is_im:
            deliveries.append(await self.deliver_event(self.envelope({"type": "app_mention", **base})))
        return deliveries

    # ------------------------------------------------------------------ interactions

    def _actor(self, user: str) -> JSON:
        person = self.ws.user(user)
        return {
            "user": {"id": user, "username": person["name"], "name": person["name"], "team_id": self.ws.team_id},
            "team": {"id": self.ws.team_id, "domain": self.ws.team_domain},
            "api_app_id": self.ws.app_id,
            "token": self.verification_token,
            "enterprise": None,
            "is_enterprise_install": False,
        }

    def _response_url(self, context: JSON) -> str:
        return f"{self._base_url()}response/{self.ws.new_response_url_token(context)}"

    def _find_message(self, user: str, channel: str, message_ts: str) -> tuple[JSON | None, JSON | None]:
        """(channel message, ephemeral) for a ts: a card may be either."""
        eph = self.ws.ephemeral(message_ts)
        if eph is not None:
            if eph["user"] != user:
                raise ValueError(f"ephemeral {message_ts} belongs to {eph['user']}, not {user}")
            return None, eph
        return self.ws.api_message(channel, message_ts), None

    def _block_actions(self, user: str, channel: str, message_ts: str, action: JSON) -> JSON:
        cid = self.ws.resolve_channel(channel)
        message, eph = self._find_message(user, cid, message_ts)
        thread_ts = (message or eph or {}).get("thread_ts")
        container: JSON = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": cid,
            "is_ephemeral": eph is not None,
        }
        if thread_ts:
            container["thread_ts"] = thread_ts
        info = self.ws.channel(cid)
        payload: JSON = {
            "type": "block_actions",
            **self._actor(user),
            "container": container,
            "trigger_id": self.ws.new_trigger(user),
            "channel": {"id": cid, "name": info.get("name", "directmessage")},
            "state": {"values": self.ws.state_values(user, cid, message_ts)},
            "response_url": self._response_url(
                {
                    "channel": cid,
                    "message_ts": message_ts,
                    "user": user,
                    "is_ephemeral": eph is not None,
                    "thread_ts": thread_ts,
                }
            ),
            "actions": [{**action, "action_ts": f"{time.time():.6f}"}],
        }
        if message is not None:  # Slack omits `message` for ephemeral cards
            payload["message"] = message
        return payload

    def _locate(
        self, user: str, channel: str, message_ts: str, action_id: str, block_id: str | None
    ) -> tuple[JSON, JSON]:
        message, eph = self._find_message(user, self.ws.resolve_channel(channel), message_ts)
        blocks = (message or eph or {}).get("blocks") or []
        for block, el in blockkit.iter_elements(blocks):
            if el.get("action_id") == action_id and (block_id is None or block["block_id"] == block_id):
                return block, el
        raise ValueError(f"no element action_id={action_id!r} block_id={block_id!r} on message {message_ts}")

    async def click_button(
        self, user: str, channel: str, message_ts: str, action_id: str, block_id: str | None = None
    ) -> Delivery:
        block, el = self._locate(user, channel, message_ts, action_id, block_id)
        if el.get("type") != "button":
            raise ValueError(f"{action_id!r} is a {el.get('type')}, not a button")
        action: JSON = {
            "type": "button",
            "action_id": action_id,
            "block_id": block["block_id"],
            "text": el.get("text"),
            "value": el.get("value"),
        }
        if el.get("style"):
            action["style"] = el["style"]
        return await self._send_payload(self._block_actions(user, channel, message_ts, action))

    async def toggle_checkbox(
        self, user: str, channel: str, message_ts: str, block_id: str, action_id: str, value: str, checked: bool
    ) -> Delivery:
        """Tick or untick one option: Slack sends a block_actions for every single tick."""
        self._locate(user, channel, message_ts, action_id, block_id)
        selected = self.ws.set_tick(user, channel, message_ts, block_id, action_id, value, checked)
        action = {"type": "checkboxes", "action_id": action_id, "block_id": block_id, "selected_options": selected}
        return await self._send_payload(self._block_actions(user, channel, message_ts, action))

    async def slash_command(self, user: str, channel: str, command: str, text: str = "") -> Delivery:
        cid = self.ws.resolve_channel(channel)
        info = self.ws.channel(cid)
        fields = {
            "token": self.verification_token,
            "team_id": self.ws.team_id,
            "team_domain": self.ws.team_domain,
            "channel_id": cid,
            "channel_name": info.get("name", "directmessage"),
            "user_id": user,
            "user_name": self.ws.user(user)["name"],
            "command": command,
            "text": text,
            "api_app_id": self.ws.app_id,
            "is_enterprise_install": "false",
            "response_url": self._response_url({"channel": cid, "user": user, "is_ephemeral": False}),
            "trigger_id": self.ws.new_trigger(user),
        }
        delivery = await self._send(
            "slash_command",
            fields,
            urlencode(fields).encode(),
            FORM,
            envelope_type="slash_commands",
            accepts_response_payload=True,
        )
        if delivery.status == 200 and delivery.body.strip():
            # The ack body is what Slack shows the caller (ephemeral unless response_type is in_channel).
            answer: JSON = delivery.json if isinstance(delivery.json, dict) else {"text": delivery.body}
            if answer.get("text") or answer.get("blocks"):
                if answer.get("response_type") == "in_channel":
                    self.ws.post_message(cid, self.ws.bot_user_id, answer.get("text"), answer.get("blocks"))
                    delivery.notes.append("ack posted in channel")
                else:
                    self.ws.post_ephemeral(cid, user, answer.get("text"), answer.get("blocks"), source="slash_ack")
                    delivery.notes.append("ack recorded as ephemeral")
        return delivery

    # ------------------------------------------------------------------ modals

    async def submit_view(self, user: str, view_id: str, values: dict[str, dict[str, Any]] | None = None) -> Delivery:
        """Press Submit with `values` = {block_id: {action_id: value}}; apply the bot's response_action."""
        record = self.ws.view(view_id)
        if not record["is_open"]:
            raise ValueError(f"view {view_id} is not open")
        view = record["view"]
        view["state"] = {"values": _state_values(view.get("blocks") or [], values or {})}
        payload = {
            "type": "view_submission",
            **self._actor(user),
            "trigger_id": self.ws.new_trigger(user),
            "view": view,
            "response_urls": [],
        }
        delivery = await self._send_payload(payload)
        if delivery.status != 200:
            delivery.notes.append("non-200: Slack shows an error and keeps the modal open")
            return delivery
        self._apply_view_answer(user, view_id, delivery)
        return delivery

    def _apply_view_answer(self, user: str, view_id: str, delivery: Delivery) -> None:
        answer = delivery.json if delivery.body.strip() else {}
        if not isinstance(answer, dict):
            delivery.notes.append("unparseable answer: Slack shows an error")
            return
        action = answer.get("response_action")
        if action is None:
            self.ws.close_view(view_id)
            delivery.notes.append("view closed")
        elif action == "errors":
            self.ws.set_view_errors(view_id, answer.get("errors") or {})
            delivery.notes.append("field errors shown")
        elif action == "clear":
            self.ws.clear_views(user)
            delivery.notes.append("view stack cleared")
        elif action in ("update", "push"):
            problem = blockkit.check_view(answer.get("view"))
            if problem:
                delivery.error = f"{problem.error}: {problem.messages}"
                return
            if action == "update":
                self.ws.update_view(answer["view"], view_id=view_id)
            else:
                try:
                    self.ws.push_view(user, answer["view"])
                except SlackError as e:
                    delivery.error = e.error
                    return
            delivery.notes.append("view updated" if action == "update" else "view pushed")
        else:
            delivery.error = f"unknown response_action {action!r}"

    async def close_view(self, user: str, view_id: str) -> Delivery | None:
        """The user closes the modal: the stack goes away; `view_closed` only if the view asked notify_on_close."""
        record = self.ws.view(view_id)
        self.ws.clear_views(user)
        if not record["view"].get("notify_on_close"):
            return None
        payload = {"type": "view_closed", **self._actor(user), "view": record["view"], "is_cleared": False}
        return await self._send_payload(payload)


def _state_values(blocks: list[JSON], values: dict[str, dict[str, Any]]) -> JSON:
    """`view.state.values`, typed per element as Slack sends them: what the person typed, else the field's
    initial value, else empty."""
    out: JSON = {}
    known: set[tuple[str, str]] = set()
    for block, el in blockkit.iter_elements(blocks):
        if block.get("type") not in ("input", "section", "actions") or "action_id" not in el:
            continue
        bid, aid = block["block_id"], el["action_id"]
        known.add((bid, aid))
        given = values.get(bid, {}).get(aid)
        if given is None:
            given = _initial(el)  # an untouched field submits what it shows
        if block.get("type") != "input" and given is None:
            continue
        out.setdefault(bid, {})[aid] = _typed_value(el, given)
    for bid, actions in values.items():
        for aid in actions:
            if (bid, aid) not in known:
                raise ValueError(f"view has no element block_id={bid!r} action_id={aid!r}")
    return out


def _initial(el: JSON) -> Any:
    if "initial_options" in el:
        return [o["value"] for o in el["initial_options"]]
    if "initial_option" in el:
        return el["initial_option"]["value"]
    return el.get("initial_value")


def _option(el: JSON, value: Any) -> JSON:
    for opt in el.get("options") or [o for g in el.get("option_groups") or [] for o in g.get("options", [])]:
        if opt.get("value") == value:
            return dict(opt)
    raise ValueError(f"{el.get('action_id')!r} has no option {value!r}")


def _typed_value(el: JSON, value: Any) -> JSON:
    kind = el["type"]
    if kind in ("static_select", "radio_buttons", "external_select"):
        return {"type": kind, "selected_option": _option(el, value) if value is not None else None}
    if kind in ("checkboxes", "multi_static_select"):
        chosen = list(value or [])
        return {"type": kind, "selected_options": [_option(el, v) for v in chosen]}
    selected_keys = {
        "users_select": "selected_user",
        "multi_users_select": "selected_users",
        "conversations_select": "selected_conversation",
        "multi_conversations_select": "selected_conversations",
        "channels_select": "selected_channel",
        "multi_channels_select": "selected_channels",
        "datepicker": "selected_date",
        "timepicker": "selected_time",
        "datetimepicker": "selected_date_time",
    }
    if kind in selected_keys:
        return {"type": kind, selected_keys[kind]: value}
    # plain_text_input, number_input, email/url inputs: a string value (Slack sends numbers as strings too).
    return {"type": kind, "value": None if value is None else str(value)}
