"""The terminal demo: a person types a task, approves at the prompt, and reads the result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_terminal_demo_asks_before_running_and_reports(redis_url, runbooks, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATOPS_"))}
    env.update(REDIS_URL=redis_url, CHATOPS_RUNBOOKS_DIR=str(runbooks.dir), CHATOPS_DATA_DIR=str(tmp_path))
    # Approve the runbook; reject the post with a reason.
    answers = "a\nr\nnot now\n"
    done = subprocess.run(
        [sys.executable, "-m", "graphs", "run the disk-usage runbook and post a summary to #ops"],
        input=answers,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "[offline planner: no model configured]" in out
    assert "1. run_runbook\n     name: disk-usage\n" in out  # each value whole, on its own line
    assert "run_runbook ok" in out and "/ 42% used" in out
    assert "1. post_message\n     channel: #ops\n" in out
    assert re.search(r"post_message: .*rejected.*not now", out, re.IGNORECASE), out[-2000:]  # with the reason
    assert "[message to" not in out  # and not posted
    assert len(runbooks.executions("disk-usage")) == 1
