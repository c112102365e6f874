"""The call log: every Web API call, response_url post and delivery, in order, for tests and the inspector UI."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

Entry = dict[str, Any]

# Values of these keys never reach the log: a UI may show it to anyone looking at the screen.
_SECRET_KEYS = frozenset({"token", "authorization", "client_secret"})


def redact(value: Any) -> Any:
    """Deep copy with tokens replaced, so the log is safe to render."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if str(k).lower() in _SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return copy.deepcopy(value)


class CallLog:
    """Append-only, thread-safe list of entries; each gets a `seq` so a poller can ask for what is new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []

    def add(self, kind: str, **fields: Any) -> Entry:
        with self._lock:
            entry: Entry = {"seq": len(self._entries) + 1, "kind": kind, "time": time.time(), **redact(fields)}
            self._entries.append(entry)
            return copy.deepcopy(entry)

    def entries(self, kind: str | None = None, method: str | None = None, since: int = 0) -> list[Entry]:
        with self._lock:
            found = [
                e
                for e in self._entries
                if e["seq"] > since
                and (kind is None or e["kind"] == kind)
                and (method is None or e.get("method") == method)
            ]
            return copy.deepcopy(found)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
