"""What a platform engineer deploys: the manifest, the image, the compose file, start-up checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.settings import BotSettings
from graphs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Every Web API method the bot calls, and the bot scope it needs (None: no scope).
METHOD_SCOPES = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "views.open": None,
    "chat.getPermalink": None,
    "usergroups.users.list": "usergroups:read",
    "usergroups.list": "usergroups:read",  # a group named in a refusal by its handle, never pinged
    # Which channel a post_message argument really names (private ones need groups:read too).
    "conversations.info": "channels:read",
    "conversations.list": "channels:read",
}


def test_the_manifest_declares_what_the_bot_uses():
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert len(manifest["display_information"]["name"]) <= 35
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert "/chatops" in commands and len("/chatops") <= 32
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {s for s in METHOD_SCOPES.values() if s} <= scopes
    assert {"app_mentions:read", "commands", "im:history", "groups:read"} <= scopes
    assert {"app_mention", "message.im"} <= set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True


def test_every_web_api_method_the_bot_calls_has_a_known_scope():
    def key(name: str) -> str:  # chat_postMessage, chat.postMessage -> chatpostmessage
        return name.replace(".", "").replace("_", "").lower()

    source = "\n".join(p.read_text() for p in (ROOT / "bot").glob("*.py"))
    families = "chat|views|usergroups|users|conversations|reactions|auth|files|team|assistant|apps"
    called = set(re.findall(rf"client\.((?:{families})_\w+)\(", source))
    known = {key(m) for m in METHOD_SCOPES}
    assert called and all(key(m) in known for m in called), f"add {called} to METHOD_SCOPES and the manifest"


def test_the_image_runs_as_a_user_and_checks_its_health():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER chatops" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["services"]["redis"]["image"] == "redis:8"
    assert compose["services"]["bot"]["environment"]["REDIS_URL"].startswith("redis://redis:")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxp-user"}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xoxb-2"}, "SLACK_APP_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s", "PORT": "http"}, "PORT"),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s", "CHATOPS_APPROVERS": "alice"}, "CHATOPS_APPROVERS"),
    ],
)
def test_start_up_names_the_missing_or_bad_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        BotSettings.from_env(env)


def test_socket_mode_needs_no_signing_secret():
    settings = BotSettings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"})
    assert settings.socket_mode and settings.signing_secret is None
    assert BotSettings.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"}).port == 3000


def test_python_m_bot_without_configuration_says_what_is_missing():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "CHATOPS_"))}
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "SLACK_BOT_TOKEN is not set" in done.stderr
