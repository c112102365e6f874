"""The audit log: an append-only Redis stream of every decision, edit, rewind, cancel and expiry.

Export it as JSON lines: ``python -m bot.audit [--run RUN]`` (uses REDIS_URL and CHATOPS_KEY_PREFIX).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias, cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from graphs.errors import ConfigError
from graphs.keys import Keys
from graphs.settings import CoreSettings
from graphs.types import ReviewDecided

from .blocks import clip, literal

EXPORT_PAGE = 1000
EXPORT_MAX_PAGES = 100_000  # a bound on the loop, far beyond any real log


@dataclass(frozen=True)
class AuditEntry:
    run: str
    action: str  # approved, edited, rejected, approval (one of M), vetoed, rewound, cancelled, expired
    by: str  # a Slack user ID, or "policy"/"system"
    at: float = field(default_factory=time.time)
    tool_call: dict[str, Any] | None = None  # {"id", "name", "args"} of the exact call
    details: dict[str, Any] = field(default_factory=dict)  # e.g. old/new args, a reason, a checkpoint
    id: str = ""

    def line(self) -> str:
        """One human-readable line for /chatops audit."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.at))
        who = self.by if self.by in ("policy", "system") else ", ".join(f"<@{u}>" for u in self.by.split(",") if u)
        call = f" `{literal(self.tool_call['name'])}`" if self.tool_call else ""
        extra = ""
        if self.action == "edited":
            old, new = (json.dumps(self.details.get(k), ensure_ascii=False) for k in ("old_args", "new_args"))
            extra = f" {literal(clip(old, 300))} → {literal(clip(new, 300))}"
        elif self.details.get("reason"):
            extra = f" ({literal(clip(str(self.details['reason']), 300))})"
        elif self.details.get("checkpoint"):
            extra = f" to checkpoint `{self.details['checkpoint']}`"
        elif self.details.get("count"):
            extra = f" ({self.details['count']} of {self.details['required']})"
        return f"{when} UTC · run `{self.run}` · {self.action}{call} by {who}{extra}"


# Stream entries as a decoding client reads them: (entry id, fields).
_Rows: TypeAlias = list[tuple[str, dict[str, str]]]


class AuditLog:
    """``redis`` decodes replies (``decode_responses=True``): they are str, which redis-py's types cannot know."""

    def __init__(self, redis: Redis, *, keys: Keys | None = None) -> None:
        self._redis = redis
        self._keys = keys or Keys()
        self._all = self._keys.audit

    def _run_stream(self, run: str) -> str:
        return self._keys.run_audit(run)

    async def record(self, entry: AuditEntry) -> None:
        fields: dict[FieldT, EncodableT] = {"json": json.dumps({k: v for k, v in asdict(entry).items() if k != "id"})}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._all, fields)
            pipe.xadd(self._run_stream(entry.run), fields)
            await pipe.execute()

    async def record_decision(self, run_id: str, event: ReviewDecided) -> None:
        """One entry per call of a decided card: the exact call, what was decided, edits and reasons."""
        by = event.decided_by or "?"
        for action, decision in zip(event.request["action_requests"], event.decisions, strict=True):
            call = {"id": action["tool_call_id"], "name": action["name"], "args": action["args"]}
            details: dict[str, Any] = {"interrupt": event.interrupt_id}
            if decision["type"] == "edit":
                call["args"] = decision["edited_action"]["args"]
                details.update(old_args=action["args"], new_args=decision["edited_action"]["args"])
            if decision["type"] == "reject" and decision.get("message"):
                details["reason"] = decision["message"]
            kind = {"approve": "approved", "edit": "edited", "reject": "rejected"}[decision["type"]]
            await self.record(AuditEntry(run_id, kind, by, tool_call=call, details=details))

    async def recent(self, run: str | None = None, count: int = 20) -> list[AuditEntry]:
        """Newest first."""
        stream = self._run_stream(run) if run else self._all
        rows = cast(_Rows, await self._redis.xrevrange(stream, count=count))
        return [_entry(row_id, data) for row_id, data in rows]

    async def export(self, run: str | None = None) -> list[AuditEntry]:
        """Everything, oldest first, read page by page."""
        stream = self._run_stream(run) if run else self._all
        entries: list[AuditEntry] = []
        start = "-"
        for _ in range(EXPORT_MAX_PAGES):
            rows = cast(_Rows, await self._redis.xrange(stream, min=start, count=EXPORT_PAGE))
            entries += [_entry(row_id, data) for row_id, data in rows]
            if len(rows) < EXPORT_PAGE:
                break
            start = "(" + rows[-1][0]  # exclusive: continue after the last row read
        return entries


def _entry(row_id: Any, data: dict[Any, Any]) -> AuditEntry:
    raw = data.get("json") or data.get(b"json")
    if raw is None:
        raise TypeError(f"audit entry {row_id!r} has no json field")
    parsed = json.loads(raw)
    return AuditEntry(**parsed, id=row_id.decode() if isinstance(row_id, bytes) else row_id)


async def _export(settings: CoreSettings, run: str | None) -> int:
    if not settings.redis_url:
        print("REDIS_URL is not set: point it at the bot's Redis", file=sys.stderr)
        return 2
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        for entry in await AuditLog(redis, keys=Keys(settings.key_prefix)).export(run):
            print(json.dumps(asdict(entry)))
    finally:
        await redis.aclose()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bot.audit", description="Export the audit log as JSON lines.")
    parser.add_argument("--run", help="only this run id")
    args = parser.parse_args()
    try:
        settings = CoreSettings.from_env(os.environ)  # REDIS_URL and CHATOPS_KEY_PREFIX, read as the bot reads them
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    sys.exit(asyncio.run(_export(settings, args.run)))


if __name__ == "__main__":
    main()
