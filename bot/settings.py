"""Bot settings, read once from the environment at start-up; errors name the missing variable."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from graphs.errors import ConfigError
from graphs.settings import CoreSettings

SLACK_API_DEFAULT = "https://slack.com/api/"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _ids(raw: str | None, name: str) -> frozenset[str]:
    ids = frozenset(part.strip() for part in (raw or "").replace(",", " ").split() if part.strip())
    bad = sorted(i for i in ids if i[:1] not in ("U", "W", "S"))
    if bad:
        raise ConfigError(
            f"{name} holds Slack user IDs (U…/W…) and user group IDs (S…), never names; "
            f"not understood: {', '.join(bad)}"
        )
    return ids


def _count(raw: str | None, name: str, default: int, *, minimum: int) -> int:
    if raw in (None, ""):
        return default
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name} must be a whole number of at least {minimum}, got {raw!r}")
    return int(raw)


def _flag(raw: str | None, name: str, default: bool) -> bool:
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class BotSettings:
    bot_token: str
    signing_secret: str | None
    app_token: str | None  # set: Socket Mode; unset: HTTP mode
    api_url: str = SLACK_API_DEFAULT
    port: int = 3000
    approvers: frozenset[str] = frozenset()  # empty: any member except the requester
    allow_self_approval: bool = False
    admins: frozenset[str] = frozenset()  # may use history, rewind, cancel, audit
    update_budget_per_minute: int = 45  # chat.update is Tier 3 (~50/min per workspace)
    review_channel: str | None = None  # CHATOPS_REVIEW_CHANNEL: where cards of DM requests (or all) are posted
    review_all: bool = False  # CHATOPS_REVIEW_ALL: every request's card goes to the review channel
    max_active_runs: int = 8  # CHATOPS_MAX_ACTIVE_RUNS: runs one process starts and works on at once; more queue
    max_runs_per_user: int = 5  # CHATOPS_MAX_RUNS_PER_USER: one person's queued and working runs (0: no limit)
    host: str = "0.0.0.0"  # HOST: the HTTP listener's address (/slack/events, /healthz)
    log_level: str = "INFO"  # LOG_LEVEL: DEBUG, INFO, WARNING or ERROR
    core: CoreSettings = field(default_factory=CoreSettings)  # the model, Redis, tools and the approval policy

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotSettings:
        env = os.environ if env is None else env
        bot_token = env.get("SLACK_BOT_TOKEN", "")
        if not bot_token:
            raise ConfigError("SLACK_BOT_TOKEN is not set: the bot token (xoxb-…) from your Slack app's OAuth page")
        if not bot_token.startswith("xoxb-"):
            raise ConfigError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        app_token = env.get("SLACK_APP_TOKEN") or None
        if app_token and not app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp- (Socket Mode)")
        signing_secret = env.get("SLACK_SIGNING_SECRET") or None
        if not app_token and not signing_secret:
            raise ConfigError(
                "SLACK_SIGNING_SECRET is not set: HTTP mode needs it to verify Slack's requests "
                "(Basic Information -> Signing Secret); or set SLACK_APP_TOKEN for Socket Mode"
            )
        raw_port = env.get("PORT") or "3000"
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise ConfigError(f"PORT must be a TCP port number, got {raw_port!r}")
        api_url = env.get("SLACK_API_URL") or SLACK_API_DEFAULT
        raw_budget = env.get("CHATOPS_UPDATE_BUDGET") or "45"
        if not raw_budget.isdigit() or int(raw_budget) < 1:
            raise ConfigError(
                f"CHATOPS_UPDATE_BUDGET must be a positive number of chat.update calls per minute, got {raw_budget!r}"
            )
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {env.get('LOG_LEVEL')!r}")
        review_channel = (env.get("CHATOPS_REVIEW_CHANNEL") or "").strip() or None
        if review_channel and not re.fullmatch(r"[CG][A-Z0-9]{2,}", review_channel):
            raise ConfigError(
                "CHATOPS_REVIEW_CHANNEL is a channel ID (C… or G…, from the channel's details), never a name; "
                f"got {review_channel!r}"
            )
        review_all = _flag(env.get("CHATOPS_REVIEW_ALL"), "CHATOPS_REVIEW_ALL", False)
        if review_all and not review_channel:
            raise ConfigError("CHATOPS_REVIEW_ALL needs CHATOPS_REVIEW_CHANNEL: the channel every card goes to")
        max_active = _count(env.get("CHATOPS_MAX_ACTIVE_RUNS"), "CHATOPS_MAX_ACTIVE_RUNS", 8, minimum=1)
        per_user = _count(env.get("CHATOPS_MAX_RUNS_PER_USER"), "CHATOPS_MAX_RUNS_PER_USER", 5, minimum=0)
        core = CoreSettings.from_env(env)
        if max_active * 2 > core.redis_max_connections:
            # Each idle worker holds a pooled connection in a blocking read: half the pool stays for everything else.
            raise ConfigError(
                f"CHATOPS_MAX_ACTIVE_RUNS ({max_active}) may be at most half of CHATOPS_REDIS_MAX_CONNECTIONS "
                f"({core.redis_max_connections}): each waiting worker holds a Redis connection"
            )
        return cls(
            bot_token=bot_token,
            signing_secret=signing_secret,
            app_token=app_token,
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            port=int(raw_port),
            approvers=_ids(env.get("CHATOPS_APPROVERS"), "CHATOPS_APPROVERS"),
            update_budget_per_minute=int(raw_budget),
            admins=_ids(env.get("CHATOPS_ADMINS"), "CHATOPS_ADMINS"),
            allow_self_approval=_flag(env.get("CHATOPS_ALLOW_SELF_APPROVAL"), "CHATOPS_ALLOW_SELF_APPROVAL", False),
            review_channel=review_channel,
            review_all=review_all,
            max_active_runs=max_active,
            max_runs_per_user=per_user,
            host=env.get("HOST") or "0.0.0.0",
            log_level=log_level,
            core=core,
        )
