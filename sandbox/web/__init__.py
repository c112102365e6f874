"""The sandbox's web UI: a Slack-like page (channels, threads, Block Kit, modals, inspector) served by the local Slack.

LocalSlack(secret, extra_routes=ui_routes(UiConfig(model_label="offline planner (no model configured)")))
"""

from .routes import Persona, UiConfig, ui_routes

__all__ = ["Persona", "UiConfig", "ui_routes"]
