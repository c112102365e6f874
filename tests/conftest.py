"""Shared fixtures: a throwaway real Redis 8 (Search + JSON), the scripted model server, test runbooks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from graphs.embedded_redis import EmbeddedRedis
from graphs.runtime import Runtime, open_runtime
from graphs.settings import CoreSettings
from sandbox.openai_server import ScriptedOpenAI
from sandbox.slack import LocalSlack

from .bot_support import SECRET as SLACK_SIGNING_SECRET


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One real Redis 8 with Search + JSON per test session, on a free port, nothing written to disk."""
    server = EmbeddedRedis(persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def model() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as server:
        yield server
        assert not server.unmatched, f"the model got prompts no rule scripted: {server.unmatched[-1]}"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's naming
        if self.path.startswith("/slow"):
            time.sleep(3)
        status = 200 if self.path.startswith(("/health", "/slow")) else 503
        body = b"ok" if status == 200 else b"down"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def health_url() -> Iterator[str]:
    """A local service to health-check: /health answers 200, anything else 503."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Runbooks:
    """A runbooks folder whose scripts record each execution in a log file, so tests can count runs."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "runbooks"
        self.dir.mkdir()
        self.log = root / "executions.log"
        self.log.touch()
        self._script("record", f'echo "record $$" >> "{self.log}"\necho "recorded ok"')
        self._script("disk-usage", f'echo "disk-usage $$" >> "{self.log}"\necho "/ 42% used"')
        self._script("sleepy", f'echo "sleepy $$" >> "{self.log}"\nsleep 30')
        self._script("failing", 'echo "database unreachable"\nexit 3')
        self._script("slow", f'echo "slow $$" >> "{self.log}"\nsleep 3\necho "slow done"')
        (self.dir / "notes.md").write_text("# Disk full: what to do\nRun disk-usage first.\n")

    def _script(self, name: str, body: str) -> None:
        path = self.dir / f"{name}.sh"
        path.write_text(f"#!/usr/bin/env bash\n# {name} (test runbook)\n{body}\n")
        path.chmod(0o755)

    def executions(self, name: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [line for line in lines if name is None or line.split()[0] == name]


@pytest.fixture
def runbooks(tmp_path: Path) -> Runbooks:
    return Runbooks(tmp_path)


class Outbox:
    """The post_message hook as the Slack layer would provide it; records what was posted."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []

    async def __call__(self, channel: str, text: str) -> str:
        self.posts.append((channel, text))
        return f"posted to {channel}"


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


def settings_for(redis_url: str, model: ScriptedOpenAI, runbooks: Runbooks, **overrides: object) -> CoreSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "openai_base_url": model.base_url,
        "openai_api_key": "test-key",
        "model": "scripted",
        "runbooks_dir": runbooks.dir,
        "runbook_timeout_s": 10.0,
    }
    values.update(overrides)
    return CoreSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(redis_url: str, model: ScriptedOpenAI, runbooks: Runbooks, outbox: Outbox) -> AsyncIterator[Runtime]:
    async with open_runtime(settings_for(redis_url, model, runbooks), post_message=outbox) as rt:
        yield rt


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    """A local Slack for one test; the bot must only call Web API methods Slack has."""
    with LocalSlack(SLACK_SIGNING_SECRET) as local:
        yield local
        assert not local.unknown_calls, f"the bot called Web API methods Slack lacks: {local.unknown_calls}"


@pytest.fixture
def start(slack, env, tmp_path):  # env: the test module's bot environment
    """Start the real bot (``start(**extra_env)``), as often as a test needs; each is stopped cleanly after it
    and its log must be free of tracebacks."""
    from .bot_support import start_bot

    started = []

    def start_with(**extra: str):
        process = start_bot(slack, {**env, **extra}, tmp_path / f"bot{len(started)}.log")
        started.append(process)
        return process

    yield start_with
    for process in started:
        if process.running:
            assert process.stop() == 0
        assert "Traceback" not in process.log(), process.log()[-3000:]


@pytest.fixture
def thread_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"
