"""The built-in tools: runbook search and execution, HTTP health checks, and a post-message hook.

All of them are safe on a machine without internet: runbooks come only from the configured folder,
never from an arbitrary command, and every call is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from .errors import OutboundError, ToolFailed
from .outbound import HttpAllowlist, OutboundGuard
from .redaction import child_env
from .tools import CURRENT_CALL, Assess, ToolRegistry

PostMessage = Callable[[str, str], Awaitable[str]]

BUNDLED_RUNBOOKS = Path(__file__).parent / "runbooks"
RUNNABLE = {".sh": ("bash",), ".py": (sys.executable,)}
SEARCHABLE = {".md", ".sh", ".py", ".txt"}
MAX_OUTPUT_CHARS = 4000
MAX_RUNBOOK_NAME = 100
RUNBOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def build_registry(
    runbooks_dir: Path = BUNDLED_RUNBOOKS,
    post_message: PostMessage | None = None,
    *,
    runbook_timeout_s: float = 60.0,
    http_timeout_s: float = 5.0,
    runbook_env: Mapping[str, str] | None = None,
    guard: OutboundGuard | None = None,
    assess_post: Assess | None = None,
) -> ToolRegistry:
    """The built-in tools. ``runbook_env`` is the whole environment a runbook gets (default: the minimal
    one of graphs.redaction.child_env, never the bot's own variables). ``guard`` is how http_check reaches URLs
    (default: no allowlist, so internal targets are refused)."""
    runbooks_dir = Path(runbooks_dir).resolve()
    registry = ToolRegistry()
    env = dict(child_env(os.environ) if runbook_env is None else runbook_env)
    outbound = guard if guard is not None else OutboundGuard(HttpAllowlist.parse(None), timeout_s=http_timeout_s)

    async def search_runbooks(query: str) -> str:
        """Search the runbooks folder (markdown notes and scripts) for a query; returns matching runbook names with their titles."""  # noqa: E501 - the model reads it as one line
        return find_runbooks(runbooks_dir, query)

    async def http_check(url: str) -> str:
        """Check an HTTP(S) endpoint with a GET: returns the status, latency and the start of the body. Internal addresses are refused unless allowlisted."""  # noqa: E501 - the model reads it as one line
        try:
            fetched = await outbound.fetch(url, reviewed=CURRENT_CALL.get().reviewed)
        except OutboundError as exc:
            raise ToolFailed(str(exc)) from None
        if fetched.status >= 400:
            raise ToolFailed(fetched.summary())
        return fetched.summary()

    async def run_runbook(name: str) -> str:
        """Run a runbook script by name (as listed by search_runbooks) from the configured runbooks folder; returns its exit code and output."""  # noqa: E501 - the model reads it as one line
        script = resolve_runbook(runbooks_dir, name)
        return await _run_script(script, runbook_timeout_s, env)

    async def post_message_tool(channel: str, text: str) -> str:
        """Post a message to a chat channel, e.g. channel="#ops"."""
        if post_message is None:
            raise ToolFailed("posting messages is not available here (no chat connection configured)")
        return await post_message(channel, text)

    registry.add(search_runbooks, timeout_s=10)
    # The URL's own check decides per call: allowlisted runs alone, public needs a person, internal never runs.
    registry.add(http_check, timeout_s=outbound.timeout_s + 5, assess=lambda args: outbound.assess(args["url"]))
    registry.add(run_runbook, description=_run_runbook_description(runbooks_dir), timeout_s=runbook_timeout_s + 5)
    # The chat surface says where a post really goes and whom it notifies, for the card (assess_post).
    registry.add(post_message_tool, name="post_message", timeout_s=30, assess=assess_post)
    return registry


def list_runbooks(runbooks_dir: Path) -> list[Path]:
    """The runbook files of the folder; a symlink counts only if it stays inside the folder."""
    root = Path(runbooks_dir).resolve()
    return sorted(p for p in root.iterdir() if p.suffix in SEARCHABLE and _inside(root, p))


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.is_file() and path.resolve().parent == root
    except OSError:
        return False


def runbook_title(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines()[:10]:
        match = re.match(r"^\s*(?:#+|//)\s*(?:Title:\s*)?(.+)$", line)
        if match and not line.startswith("#!"):
            return match.group(1).strip()
    return path.stem


def find_runbooks(runbooks_dir: Path, query: str) -> str:
    """What search_runbooks answers: the best five runbooks for ``query`` by name and text, one line each."""
    words = [w for w in re.findall(r"[a-z0-9]+", query.lower()) if len(w) > 1]
    scored = []
    for path in list_runbooks(runbooks_dir):
        text = path.read_text(errors="replace").lower()
        name = path.stem.lower()
        score = sum(3 * (w in name) + min(text.count(w), 3) for w in words)
        if score or not words:
            scored.append((score, path))
    scored.sort(key=lambda item: (-item[0], item[1].name))
    if not scored:
        return f"no runbook matches {query!r}"
    lines = []
    for _, path in scored[:5]:
        kind = "runnable" if path.suffix in RUNNABLE else "notes"
        lines.append(f"{path.name} ({kind}): {runbook_title(path)}")
    return "\n".join(lines)


def resolve_runbook(runbooks_dir: Path, name: str) -> Path:
    """The runnable file run_runbook runs for ``name``: one directly inside ``runbooks_dir`` (an absolute, resolved
    path), never elsewhere; raises ToolFailed saying why not (a path, a notes file, no such runbook)."""
    if len(name) > MAX_RUNBOOK_NAME or not RUNBOOK_NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise ToolFailed(
            f"{shown!r} is not a runbook name (use a name from search_runbooks: letters, digits, "
            "'.', '-' and '_', without a path)"
        )
    candidates = [runbooks_dir / name] + [runbooks_dir / f"{name}{ext}" for ext in RUNNABLE]
    for path in candidates:
        if _inside(runbooks_dir, path):
            if path.suffix not in RUNNABLE:
                raise ToolFailed(f"{path.name} is a notes file, not a runnable runbook")
            return path
    available = ", ".join(p.name for p in list_runbooks(runbooks_dir) if p.suffix in RUNNABLE) or "none"
    raise ToolFailed(f"no runbook named {name!r}; runnable runbooks: {available}")


async def _run_script(script: Path, timeout_s: float, env: Mapping[str, str]) -> str:
    interpreter = RUNNABLE[script.suffix]
    process = await asyncio.create_subprocess_exec(
        *interpreter,
        str(script),
        cwd=script.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout kills its children too
        env={**env, "CHATOPS_RUNBOOK": script.name},  # never the bot's own environment: it holds its tokens
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(process)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise ToolFailed(f"runbook {script.name} timed out after {timeout_s:g}s and was stopped") from None
    text = output.decode(errors="replace").strip()
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n… ({len(text) - MAX_OUTPUT_CHARS} more characters cut)"
    if process.returncode != 0:
        raise ToolFailed(f"runbook {script.name} exited with code {process.returncode}\n{text}")
    return f"runbook {script.name} exited 0\n{text}"


MAX_LISTED_RUNBOOKS = 30


def _run_runbook_description(runbooks_dir: Path) -> str:
    """run_runbook's description, naming the runnable runbooks found at start-up: small models guess names
    ("disk_runbook") when they are not told them."""
    names = sorted(p.stem for p in list_runbooks(runbooks_dir) if p.suffix in RUNNABLE)
    listed = ", ".join(names[:MAX_LISTED_RUNBOOKS]) + (", …" if len(names) > MAX_LISTED_RUNBOOKS else "")
    return "Run a runbook script by name from the configured runbooks folder; returns its exit code and output. " + (
        f"Runbooks: {listed} (search_runbooks finds any added since)." if names else "Find names with search_runbooks."
    )


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
