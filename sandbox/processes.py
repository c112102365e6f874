"""Starting and stopping the real bot as a child process (``python -m bot``), for tests, benchmarks and the sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from graphs.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class BotProcess:
    """The bot on 127.0.0.1 and a free port; its log goes to ``log_path``. HTTP mode unless ``socket_mode``: then
    SLACK_APP_TOKEN from ``env`` is kept and the bot connects to Slack over Socket Mode (its port serves /healthz)."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, *, port: int | None = None, socket_mode: bool = False
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "CHATOPS_"))}
        self.env = {**base, **env, "PORT": str(self.port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        if not socket_mode:
            self.env.pop("SLACK_APP_TOKEN", None)
        elif not self.env.get("SLACK_APP_TOKEN"):
            raise ValueError("socket_mode needs SLACK_APP_TOKEN (xapp-…) in env")
        self.socket_mode = socket_mode
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self) -> BotProcess:
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the bot exited at start-up (code {self._process.returncode}):\n{self.log()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the bot did not answer {self.health_url} within {START_TIMEOUT_S}s:\n{self.log()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        return process.returncode

    def kill(self) -> None:
        """As a crash would: no shutdown, no flushing."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
