"""What one delivery to the bot is, and the interface of the transport that carries it besides HTTP.

`Delivery` is what every delivery method of the local Slack returns, over HTTP (delivery.py) or over Socket Mode
(socket_mode.py). `SocketTransport` is all the HTTP side needs of Socket Mode; both sides import this module and
neither imports the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from .workspace import JSON


@dataclass
class Delivery:
    """One POST to the bot and its answer. `status` is 0 when no HTTP answer came (timeout, refused).

    Over Socket Mode (`transport == "socket"`): status 200 once the envelope is acked, `body` the ack's payload as
    JSON ("" when the ack has none), `headers` empty."""

    kind: str
    status: int
    headers: dict[str, str]
    body: str
    latency_ms: float
    request: Any = None  # the payload as sent (dict), or the raw body for deliver_raw
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # what the local Slack did with the answer
    transport: str = "http"  # or "socket"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class SocketTransport(Protocol):
    """Delivery as Socket Mode envelopes (socket_mode.SocketModeHub), used while the bot listens that way."""

    def wanted(self) -> bool:
        """Whether deliveries go over Socket Mode now (a client is connected, or Socket Mode is forced)."""

    async def deliver(
        self,
        kind: str,
        envelope_type: str,
        payload: JSON,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Delivery:
        """Send one envelope and wait (bounded) for its ack."""
