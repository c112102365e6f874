"""Core settings, read once from one mapping (the environment): the model, Redis, runbooks, retention, the approval
policy and the outbound allowlist. A malformed value is a ConfigError naming its variable, raised here, at start-up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .keys import DEFAULT_PREFIX, DEFAULT_TTL_S, Keys
from .outbound import HttpAllowlist
from .policy import Policy
from .redaction import child_env, secret_values

DEFAULT_MODEL = "gpt-4.1-mini"


@dataclass(frozen=True)
class CoreSettings:
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    model: str | None = None
    redis_url: str | None = None  # unset: an embedded Redis 8 is started in data_dir
    data_dir: Path = Path(".chatops-data")
    ttl_minutes: int = DEFAULT_TTL_S // 60  # how long threads, checkpoints and approvals are kept in Redis
    runbooks_dir: Path | None = None  # unset: the bundled example runbooks
    runbook_timeout_s: float = 60.0
    # Per task: how many times the model may be asked, and how many tool calls may run, before the run is stopped
    # (a small model can loop; these end it with a reason instead of running on).
    max_planner_turns: int = 8
    model_max_tokens: int = 1024  # CHATOPS_MODEL_MAX_TOKENS: the longest answer asked of the model, in tokens
    max_tool_calls: int = 40
    health_url: str | None = None  # what the offline planner checks when a request says "API" without a URL
    key_prefix: str = DEFAULT_PREFIX  # two deployments sharing one Redis need different prefixes
    # Each of the core's two Redis clients (the bot's keys and run index; the checkpointer) keeps at most this many
    # connections; a call that finds them all busy waits up to redis_pool_timeout_s for one, then fails.
    redis_max_connections: int = 100
    redis_pool_timeout_s: float = 20.0
    # The whole environment a runbook starts with: PATH, HOME, LANG, LC_ALL, TZ and the names listed in
    # CHATOPS_RUNBOOK_ENV, never the bot's own tokens.
    runbook_env: dict[str, str] = field(default_factory=lambda: child_env(os.environ))
    # Every secret value the bot holds (tokens, keys, passwords in URLs): replaced in tool output.
    secrets: frozenset[str] = frozenset()
    http_allow: str = ""  # CHATOPS_HTTP_ALLOW: internal targets tools may reach (hosts, CIDRs, URL prefixes)
    # Per tool: auto, ask or deny, who approves, how long a review may wait (CHATOPS_POLICY_FILE, CHATOPS_TOOL_*).
    policy: Policy = field(default_factory=Policy)
    # http_allow parsed, when the settings are made: a malformed entry stops start-up naming CHATOPS_HTTP_ALLOW.
    allowlist: HttpAllowlist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowlist", HttpAllowlist.parse(self.http_allow))  # frozen: set once, here

    @property
    def model_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url or self.model)

    @property
    def keys(self) -> Keys:
        """The names of this deployment's Redis keys."""
        return Keys(self.key_prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CoreSettings:
        """Everything the core reads, from ``env`` alone (default: the process environment)."""
        env = os.environ if env is None else env

        def number(name: str, default: float, kind: Callable[[str], float] = float) -> float:
            raw = env.get(name)
            if not raw:  # unset or empty
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {raw!r}")
            return value

        return cls(
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            model=env.get("CHATOPS_MODEL") or None,
            redis_url=env.get("REDIS_URL") or None,
            data_dir=Path(env.get("CHATOPS_DATA_DIR") or ".chatops-data"),
            ttl_minutes=int(number("CHATOPS_TTL_MINUTES", DEFAULT_TTL_S // 60, int)),
            runbooks_dir=Path(env["CHATOPS_RUNBOOKS_DIR"]) if env.get("CHATOPS_RUNBOOKS_DIR") else None,
            runbook_timeout_s=number("CHATOPS_RUNBOOK_TIMEOUT", 60.0),
            max_planner_turns=int(number("CHATOPS_MAX_PLANNER_TURNS", 8, int)),
            model_max_tokens=int(number("CHATOPS_MODEL_MAX_TOKENS", 1024, int)),
            max_tool_calls=int(number("CHATOPS_MAX_TOOL_CALLS", 40, int)),
            health_url=env.get("CHATOPS_HEALTH_URL") or None,
            key_prefix=env.get("CHATOPS_KEY_PREFIX") or DEFAULT_PREFIX,
            redis_max_connections=int(number("CHATOPS_REDIS_MAX_CONNECTIONS", 100, int)),
            redis_pool_timeout_s=number("CHATOPS_REDIS_POOL_TIMEOUT", 20.0),
            runbook_env=child_env(env, (env.get("CHATOPS_RUNBOOK_ENV") or "").replace(",", " ").split()),
            secrets=frozenset(secret_values(env)),
            http_allow=env.get("CHATOPS_HTTP_ALLOW") or "",
            policy=Policy.from_env(env),
        )
