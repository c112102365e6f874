"""Keeping the bot's secrets out of what tools give back, and out of what child processes are given.

Two layers, because neither is enough alone:

* a child process (a runbook, later a stdio tool server) starts with a minimal environment: PATH, HOME,
  LANG, LC_ALL, TZ and only the names an operator lists in ``CHATOPS_RUNBOOK_ENV``; never the bot's tokens;
* whatever a tool still prints (a secret an operator passed on, or one read from a file) is replaced by
  ``[redacted]`` before it reaches the ledger, the checkpoint, the model, Slack or the audit log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

REDACTED = "[redacted]"

# The variables the bot itself holds secrets in.
KNOWN_SECRETS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY", "REDIS_URL")
# Any other variable whose name says it holds a secret is treated as one too.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
# Shorter values are too likely to occur in ordinary output ("true", "8080") to be replaced safely.
MIN_SECRET_CHARS = 6

# What every child process gets from the bot's environment, whatever the operator configures.
BASE_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


def child_env(env: Mapping[str, str], passed: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """The environment for a child process: the base names, the operator's ``passed`` names, then ``extra``."""
    names = [*BASE_CHILD_ENV, *passed]
    return {**{name: env[name] for name in names if name in env}, **extra}


def secret_values(env: Mapping[str, str]) -> set[str]:
    """Every secret value the bot holds: its own tokens and keys, any variable named like a secret, and the
    password of any URL in the environment (REDIS_URL=redis://:pw@host)."""
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if name in KNOWN_SECRETS or SECRET_NAME.search(name):
            found.add(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.update({password, unquote(password)})
    return {v for v in found if len(v) >= MIN_SECRET_CHARS}


class Redactor:
    """Replaces secret values (and a few forms of them) in text with ``[redacted]``; local paths with names.

    ``paths`` maps absolute paths the bot knows (the runbooks folder) to the short name shown instead, so an
    error never tells a channel where the bot's files live.
    """

    def __init__(self, secrets: Iterable[str], paths: Mapping[str, str] | None = None) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS:
                forms.update({secret, quote(secret, safe=""), secret.encode("unicode_escape").decode()})
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(forms, key=len, reverse=True)
        self._paths = sorted((paths or {}).items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str], paths: Mapping[str, str] | None = None) -> Redactor:
        return cls(secret_values(env), paths)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for path, name in self._paths:
            text = text.replace(path, name)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets or self._paths)
