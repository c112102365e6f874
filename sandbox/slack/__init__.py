"""A local Slack for offline tests: Web API + signed delivery of events, interactions and commands to the bot.

with LocalSlack(signing_secret="s", bot_url="http://127.0.0.1:3000/slack/events") as slack:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    await slack.post_user_message("U0ALICE", "#ops", "<@U0BOT> restart api")
"""

from .server import LocalSlack
from .signing import signature, signed_headers
from .transport import Delivery
from .workspace import SlackError, Workspace

__all__ = ["Delivery", "LocalSlack", "SlackError", "Workspace", "signature", "signed_headers"]
