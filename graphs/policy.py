"""Which tool calls run on their own (auto), wait for a human (ask), or never run (deny)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError
from .types import DecisionType, ToolMode

MODES: tuple[ToolMode, ...] = ("auto", "ask", "deny")

# Read-only tools run without a pause; anything with side effects waits for a human.
DEFAULT_RULES: dict[str, ToolMode] = {
    "search_runbooks": "auto",
    "http_check": "auto",
    "run_runbook": "ask",
    "post_message": "ask",
}


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, ToolMode] = field(default_factory=lambda: dict(DEFAULT_RULES))
    # A tool nobody wrote a rule for is treated as having side effects.
    default: ToolMode = "ask"

    def __post_init__(self) -> None:
        for name, mode in {**self.rules, "<default>": self.default}.items():
            if mode not in MODES:
                raise ConfigError(f"policy for {name!r} is {mode!r}; expected one of {', '.join(MODES)}")

    def mode(self, tool_name: str) -> ToolMode:
        return self.rules.get(tool_name, self.default)

    def allowed_decisions(self, tool_name: str) -> list[DecisionType]:
        return ["approve", "edit", "reject"]

    def with_rules(self, **overrides: ToolMode) -> "Policy":
        return Policy({**self.rules, **overrides}, self.default)
