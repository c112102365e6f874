"""Approval policy: per tool, whether a call runs on its own (auto), waits for people (ask) or never runs
(deny); who may approve it, how many distinct approvers it needs, and how long a review may wait.

Read from one YAML file (CHATOPS_POLICY_FILE) with environment overrides; see policy.example.yml.
Approver ids are opaque here (the Slack layer gives them meaning: user IDs and user group IDs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from .errors import ConfigError
from .types import DecisionType, ToolMode

MODES: tuple[ToolMode, ...] = ("auto", "ask", "deny")
DEFAULT_EXPIRES_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class ToolRule:
    mode: ToolMode = "ask"
    approvers: frozenset[str] = frozenset()  # empty: the global approvers (CHATOPS_APPROVERS)
    required_approvals: int = 1  # distinct approvers; one rejection vetoes
    # May the requester approve their own run's call? None: not said here, so the global setting
    # (CHATOPS_ALLOW_SELF_APPROVAL) decides; an explicit True/False in the policy always wins over it.
    allow_self_approval: bool | None = None
    # May a post made by this tool notify a whole channel or group (@channel, @here, @everyone, user groups)?
    # Off: such mentions are posted as plain words that notify nobody.
    allow_broadcast: bool = False


# Read-only tools run without a pause; anything with side effects waits for a human.
DEFAULT_RULES: dict[str, ToolRule] = {
    "search_runbooks": ToolRule("auto", allow_self_approval=True),
    "http_check": ToolRule("auto", allow_self_approval=True),
    "run_runbook": ToolRule("ask"),
    "post_message": ToolRule("ask"),
}


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, ToolRule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    # A tool nobody wrote a rule for is treated as having side effects.
    default: ToolRule = ToolRule("ask")
    expires_after_s: float = DEFAULT_EXPIRES_AFTER_S

    def rule(self, tool_name: str) -> ToolRule:
        return self.rules.get(tool_name, self.default)

    def mode(self, tool_name: str) -> ToolMode:
        return self.rule(tool_name).mode

    def allowed_decisions(self, tool_name: str) -> list[DecisionType]:
        return ["approve", "edit", "reject"]

    def with_rules(self, **modes: ToolMode) -> Policy:
        rules = dict(self.rules)
        for name, mode in modes.items():
            _check_mode(name, mode)
            rules[name] = replace(self.rule(name), mode=mode)
        return replace(self, rules=rules)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        """The policy file named by CHATOPS_POLICY_FILE (else the defaults), then overrides:
        CHATOPS_TOOL_<NAME>=auto|ask|deny and CHATOPS_EXPIRES_AFTER (e.g. 90s, 30m, 24h).

        Reads ``env`` alone (the process environment only when none is given), as CoreSettings.from_env does."""
        env = os.environ if env is None else env
        path = env.get("CHATOPS_POLICY_FILE")
        policy = cls.from_file(Path(path)) if path else cls()
        overrides = {k[len("CHATOPS_TOOL_") :].lower(): v for k, v in env.items() if k.startswith("CHATOPS_TOOL_")}
        if overrides:
            modes = {name: _check_mode(f"CHATOPS_TOOL_{name.upper()}", mode) for name, mode in overrides.items()}
            policy = policy.with_rules(**modes)
        if env.get("CHATOPS_EXPIRES_AFTER"):
            policy = replace(
                policy, expires_after_s=parse_duration(env["CHATOPS_EXPIRES_AFTER"], "CHATOPS_EXPIRES_AFTER")
            )
        return policy

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"CHATOPS_POLICY_FILE: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"CHATOPS_POLICY_FILE: {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with 'default', 'tools' and 'expires_after'")
        unknown = set(data) - {"default", "tools", "expires_after"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected default, tools, expires_after")
        default = _rule(data.get("default") or {}, ToolRule("ask"), f"{path}: default")
        rules = dict(DEFAULT_RULES)
        tools = data.get("tools") or {}
        if not isinstance(tools, dict):
            raise ConfigError(f"{path}: 'tools' must map tool names to rules")
        for name, raw in tools.items():
            base = DEFAULT_RULES.get(name, default)
            rules[name] = _rule(raw if isinstance(raw, dict) else {"mode": raw}, base, f"{path}: tools.{name}")
        expires = data.get("expires_after", DEFAULT_EXPIRES_AFTER_S)
        return cls(rules, default, parse_duration(str(expires), f"{path}: expires_after"))


def _is_mode(mode: object) -> TypeGuard[ToolMode]:
    return mode in MODES


def _check_mode(where: str, mode: object) -> ToolMode:
    if not _is_mode(mode):
        raise ConfigError(f"{where} is {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def _rule(raw: dict[str, Any], base: ToolRule, where: str) -> ToolRule:
    unknown = set(raw) - {"mode", "approvers", "required_approvals", "allow_self_approval", "allow_broadcast"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    mode = raw.get("mode", base.mode)
    _check_mode(f"{where}.mode", mode)
    approvers = raw.get("approvers", sorted(base.approvers))
    if isinstance(approvers, str):
        approvers = approvers.replace(",", " ").split()
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        raise ConfigError(f"{where}.approvers must be a list of user or group IDs")
    required = raw.get("required_approvals", base.required_approvals)
    if not isinstance(required, int) or isinstance(required, bool) or required < 1:
        raise ConfigError(f"{where}.required_approvals must be a whole number >= 1, got {required!r}")
    allow_self = raw.get("allow_self_approval", base.allow_self_approval)
    if allow_self is not None and not isinstance(allow_self, bool):
        raise ConfigError(f"{where}.allow_self_approval must be true or false")
    allow_broadcast = raw.get("allow_broadcast", base.allow_broadcast)
    if not isinstance(allow_broadcast, bool):
        raise ConfigError(f"{where}.allow_broadcast must be true or false")
    return ToolRule(mode, frozenset(approvers), required, allow_self, allow_broadcast)


def parse_duration(raw: str, where: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*", raw)
    if not match:
        raise ConfigError(f"{where} must be a duration like 90s, 30m, 24h or 7d, got {raw!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
