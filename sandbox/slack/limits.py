"""Per-method rate limits (Slack's tiers, sliding 60 s window) and injected faults for the Web API."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

WINDOW_S = 60.0

# Calls per minute, workspace-wide, from Slack's published tiers (Tier 2 = 20, Tier 3 = 50, Tier 4 = 100).
# chat.postMessage is "special" (~1/s per channel) and is not windowed here unless configured.
DEFAULT_LIMITS: dict[str, int] = {
    "auth.test": 100,
    "chat.update": 50,
    "chat.delete": 50,
    "chat.postEphemeral": 100,
    "conversations.info": 100,
    "conversations.history": 50,
    "conversations.replies": 50,
    "conversations.open": 50,
    "users.info": 100,
    "usergroups.users.list": 20,
    "reactions.add": 50,
    "reactions.remove": 20,
    "views.open": 100,
    "views.update": 100,
    "views.push": 100,
}


@dataclass
class Fault:
    """An injected failure: the next `times` calls to `method` ("*" = any) answer `status`; with `when`, only
    calls whose parameters it accepts (e.g. only posts of an approval card) count."""

    method: str
    status: int = 429
    retry_after: int = 1
    times: int = 1
    error: str | None = None
    when: Callable[[Mapping[str, object]], bool] | None = None


@dataclass(frozen=True)
class Verdict:
    """What the limiter says about one call: pass (status 200) or fail with this status/error."""

    status: int = 200
    error: str | None = None
    retry_after: int | None = None


class Limiter:
    """Sliding-window rate limiter plus fault queue; thread-safe, clock injectable for tests."""

    def __init__(
        self, limits: Mapping[str, int | None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        merged: dict[str, int | None] = {**DEFAULT_LIMITS, **(limits or {})}
        self._limits = {m: n for m, n in merged.items() if n is not None}
        self._clock = clock
        self._lock = threading.Lock()
        self._accepted: dict[str, deque[float]] = defaultdict(deque)
        # Every attempt (accepted or not) with its running peak: what "the bot never exceeded its budget" is about.
        self._attempts: dict[str, deque[float]] = defaultdict(deque)
        self._peak: dict[str, int] = defaultdict(int)
        self._faults: list[Fault] = []

    def set_limit(self, method: str, per_minute: int | None) -> None:
        with self._lock:
            if per_minute is None:
                self._limits.pop(method, None)
            else:
                self._limits[method] = per_minute

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget faults and every window (limits stay)."""
        with self._lock:
            self._faults.clear()
            self._accepted.clear()
            self._attempts.clear()
            self._peak.clear()

    def check(self, method: str, params: Mapping[str, object] | None = None) -> Verdict:
        """Account one call to `method` (with `params`, for faults that look at them) and decide whether it
        goes through."""
        with self._lock:
            now = self._clock()
            attempts = self._attempts[method]
            attempts.append(now)
            self._prune(attempts, now)
            self._peak[method] = max(self._peak[method], len(attempts))

            for fault in self._faults:
                if (
                    fault.times > 0
                    and fault.method in (method, "*")
                    and (fault.when is None or fault.when(params or {}))
                ):
                    fault.times -= 1
                    self._faults = [f for f in self._faults if f.times > 0]
                    if fault.status == 429:
                        return Verdict(429, fault.error or "ratelimited", fault.retry_after)
                    return Verdict(fault.status, fault.error or "internal_error", None)

            limit = self._limits.get(method)
            accepted = self._accepted[method]
            self._prune(accepted, now)
            if limit is not None and len(accepted) >= limit:
                # Slack tells the client when the oldest call leaves the window.
                wait = max(1, math.ceil(accepted[0] + WINDOW_S - now))
                return Verdict(429, "ratelimited", wait)
            accepted.append(now)
            return Verdict()

    def rate(self, method: str) -> int:
        """Calls to `method` (accepted or not) in the last 60 s."""
        with self._lock:
            attempts = self._attempts[method]
            self._prune(attempts, self._clock())
            return len(attempts)

    def peak_rate(self, method: str) -> int:
        """The most calls to `method` (accepted or not) seen in any 60 s window."""
        with self._lock:
            return self._peak[method]

    def limit(self, method: str) -> int | None:
        with self._lock:
            return self._limits.get(method)

    @staticmethod
    def _prune(stamps: deque[float], now: float) -> None:
        while stamps and stamps[0] <= now - WINDOW_S:
            stamps.popleft()
