"""A separate process that resumes a thread, as another bot replica (or the bot after a restart) would.

Usage: python -m tests.worker '<json>' with keys redis_url, model_url, runbooks_dir, thread_id,
interrupt_id, decisions, decided_by, and optionally start_at (a wall-clock time to wait for, so two
workers resume at the same instant). Prints one JSON line: {"status": ..., "error": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from graphs.errors import ChatOpsError
from graphs.runtime import open_runtime
from graphs.settings import CoreSettings


async def main(spec: dict) -> dict:
    settings = CoreSettings(
        redis_url=spec["redis_url"],
        openai_base_url=spec["model_url"],
        openai_api_key="test-key",
        model="scripted",
        runbooks_dir=Path(spec["runbooks_dir"]),
    )
    async with open_runtime(settings) as rt:
        # Warm the connection and indexes first so both workers race on the resume itself.
        await rt.runs.pending_review(spec["thread_id"])
        if "start_at" in spec:
            await asyncio.sleep(max(0.0, min(10.0, spec["start_at"] - time.time())))
        try:
            result = await rt.runs.resume(
                spec["thread_id"], spec["interrupt_id"], spec["decisions"], decided_by=spec.get("decided_by")
            )
            return {"status": result.status, "report": result.report}
        except ChatOpsError as exc:
            return {"status": "refused", "error": type(exc).__name__, "message": str(exc)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
