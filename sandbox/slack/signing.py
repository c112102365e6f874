"""Slack request signing (v0 HMAC-SHA256): what Slack puts on every request it sends to an app."""

from __future__ import annotations

import hashlib
import hmac
import time

VERSION = "v0"


def signature(signing_secret: str, timestamp: str | int, body: bytes | str) -> str:
    """`v0=` + hex HMAC-SHA256(secret, `v0:{timestamp}:{raw body}`), exactly as Slack computes it."""
    raw = body.encode() if isinstance(body, str) else body
    base = f"{VERSION}:{timestamp}:".encode() + raw
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def signed_headers(signing_secret: str, body: bytes | str, timestamp: int | str | None = None) -> dict[str, str]:
    """The two headers Slack adds; `timestamp` defaults to now (tests pass an old one to test staleness)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(signing_secret, ts, body),
    }
