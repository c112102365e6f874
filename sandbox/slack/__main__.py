"""Command line: run a local Slack until Ctrl-C, e.g. to point a bot process (SLACK_API_URL) at it by hand."""

from __future__ import annotations

import argparse
import signal
import threading

from .server import LocalSlack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.slack", description=__doc__)
    parser.add_argument("--bot-url", default=None, help="the bot's events URL, e.g. http://127.0.0.1:3000/slack/events")
    parser.add_argument("--signing-secret", required=True)
    parser.add_argument("--bot-token", default="xoxb-test")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument(
        "--api-latency-ms", type=float, default=0.0, help="added to every Web API call, like slack.com's (default 0)"
    )
    args = parser.parse_args(argv)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with LocalSlack(
        args.signing_secret,
        bot_url=args.bot_url,
        bot_token=args.bot_token,
        port=args.port,
        api_latency_ms=args.api_latency_ms,
    ) as slack:
        print(f"local Slack at {slack.url} (SLACK_API_URL={slack.api_url}); delivering to {args.bot_url}", flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
