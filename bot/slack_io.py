"""The bot's own work and its Slack calls: background tasks it owns, posts with retries, ephemeral answers.

Listeners ack at once and hand work to ``SlackIO.spawn``; the task is the bot's (drained on shutdown). Whatever
the work raises that a person should hear of — a refusal, Redis being down — is said to them here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from graphs.errors import LockLost

from .errors import MalformedCard, Refused

log = logging.getLogger(__name__)

POST_ATTEMPTS = 4
# What Slack answers for a message that is not there (deleted, or a workspace that was reset, like the sandbox's).
GONE_ERRORS = frozenset({"channel_not_found", "message_not_found", "thread_not_found", "is_archived"})
NOT_RECORDED = "I could not record that: my storage is not answering. Nothing was changed; try again in a minute."
# What slack-sdk raises when Slack cannot be reached at all (as opposed to Slack answering with an error).
UNREACHABLE = (OSError, asyncio.TimeoutError, aiohttp.ClientError)
LOCATE_CONCURRENCY = 10  # chat.getPermalink calls in flight at once when checking several messages
LOCATE_WAIT_S = 2.0  # what a check of several messages may take in all; the rest count as not checked


@dataclass(frozen=True)
class Where:
    """Who to tell, and where, about work started by their click, dialog or message."""

    channel: str
    user: str
    thread_ts: str | None = None


class Undelivered(Exception):
    """chat.postMessage failed for good this time; ``retry_after`` is Slack's Retry-After when it gave one."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SlackIO:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- work the bot owns ------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any], what: str, *, where: Where | None = None) -> asyncio.Task[Any]:
        """Run ``work`` in the bot's own task; ``where``: the person to tell if it is refused or cannot be
        recorded (instead of the request vanishing after its ack)."""
        task = asyncio.create_task(self.run(work, what, where), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def run(self, work: Coroutine[Any, Any, Any], what: str, where: Where | None) -> Any:
        """Await ``work``, saying a refusal or a Redis outage to ``where``; the one place both are said."""
        try:
            return await work
        except Refused as refusal:
            if isinstance(refusal, MalformedCard):
                log.warning("%s: refused a malformed click: %s", what, refusal.detail)
            if where is not None:
                await self.tell(where, str(refusal))
        except RedisError as exc:
            log.error("%s: could not reach Redis (%s); the request was not recorded", what, type(exc).__name__)
            if where is not None:
                await self.tell(where, NOT_RECORDED)
        except LockLost as exc:
            log.warning("%s: %s", what, exc)
        return None

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let running work finish (bounded); what is cut off stays checkpointed in Redis."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)

    # --- Slack calls ------------------------------------------------------------------------------

    async def post(
        self,
        channel: str,
        thread_ts: str | None,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """chat.postMessage with 429 and 5xx handling, or None (logged); background tasks only: it may wait."""
        try:
            return await self.post_or_raise(channel, thread_ts, text, blocks)
        except Undelivered:
            return None

    async def post_or_raise(
        self,
        channel: str,
        thread_ts: str | None,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        attempts: int = POST_ATTEMPTS,
    ) -> str:
        """chat.postMessage, trying ``attempts`` times through 429s (Retry-After) and 5xx (back-off); raises
        Undelivered when it gives up."""
        retry_after = 0.0
        for attempt in range(attempts):
            try:
                response = await self.client.chat_postMessage(
                    channel=channel, thread_ts=thread_ts, text=text, blocks=blocks
                )
                return str(response["ts"])
            except SlackApiError as exc:
                status = exc.response.status_code
                if status == 429 or status >= 500:
                    retry_after = float(exc.response.headers.get("Retry-After", 1)) if status == 429 else 0.0
                    if attempt + 1 < attempts:
                        await asyncio.sleep(min(retry_after or 2**attempt, 30))
                    continue
                log.error("chat.postMessage to %s failed: %s", channel, exc.response.get("error"))
                raise Undelivered(str(exc.response.get("error"))) from None
            except UNREACHABLE as exc:  # Slack unreachable: like a 5xx
                log.warning("chat.postMessage to %s: %s", channel, type(exc).__name__)
                if attempt + 1 < attempts:
                    await asyncio.sleep(2**attempt)
        log.error("chat.postMessage to %s gave up after %d attempt(s)", channel, attempts)
        raise Undelivered(f"gave up after {attempts} attempt(s)", retry_after)

    async def tell(self, where: Where, text: str) -> None:
        """An ephemeral message only ``where.user`` sees, in the thread it is about when there is one."""
        try:
            await self.client.chat_postEphemeral(
                channel=where.channel, user=where.user, text=text, thread_ts=where.thread_ts
            )
        except SlackApiError as exc:
            log.warning("could not tell %s in %s: %s", where.user, where.channel, exc.response.get("error"))
        except UNREACHABLE as exc:
            log.warning("could not tell %s in %s: %s", where.user, where.channel, type(exc).__name__)

    async def permalink(self, channel: str | None, ts: str | None) -> str | None:
        """A link to a message, or None (a missing link is never worth failing an answer for)."""
        return (await self.locate(channel, ts))[0]

    async def locate(self, channel: str | None, ts: str | None) -> tuple[str | None, bool]:
        """(a link to a message or None, whether Slack says the message or its channel is gone). Gone is only
        what Slack answers so: an unreachable Slack or a missing scope is not taken for a deleted thread."""
        if not channel or not ts:
            return None, False
        try:
            return (await self.client.chat_getPermalink(channel=channel, message_ts=ts)).get("permalink"), False
        except SlackApiError as exc:
            return None, exc.response.get("error") in GONE_ERRORS
        except UNREACHABLE:
            return None, False

    async def locate_all(
        self,
        messages: Iterable[tuple[str, str]],
        *,
        concurrency: int = LOCATE_CONCURRENCY,
        wait_s: float = LOCATE_WAIT_S,
    ) -> dict[tuple[str, str], tuple[str | None, bool]]:
        """``locate`` for several (channel, ts) at once: at most ``concurrency`` calls in flight, ``wait_s`` in all.
        A message whose check did not answer in time is left out (neither found nor gone)."""
        wanted = list(dict.fromkeys(m for m in messages if m[0] and m[1]))
        if not wanted:
            return {}
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(message: tuple[str, str]) -> tuple[str | None, bool]:
            async with gate:
                return await self.locate(*message)

        checks = {asyncio.ensure_future(one(m)): m for m in wanted}
        done, late = await asyncio.wait(checks, timeout=wait_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("%d of %d message checks did not answer within %.1fs", len(late), len(wanted), wait_s)
        found: dict[tuple[str, str], tuple[str | None, bool]] = {}
        for task in done:
            if task.exception() is None:
                found[checks[task]] = task.result()
            else:
                log.warning("checking %s/%s failed: %s", *checks[task], type(task.exception()).__name__)
        return found
