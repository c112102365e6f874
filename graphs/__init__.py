"""The agent core's public face: the names a chat surface (bot/, the terminal demo, tests) speaks.

    from graphs import CoreSettings, open_runtime, approve

    async with open_runtime(CoreSettings.from_env()) as runtime:
        paused = await runtime.runs.start("t1", "check the API", requester="U1")
        await runtime.runs.resume("t1", paused.pending.interrupt_id, [approve()])

The vocabulary (graphs.types), the errors (graphs.errors, whose docstring draws the whole tree) and the Redis
key names (graphs.keys) are imported at once: they need nothing beyond the standard library. Everything else
loads on first use, because it pulls in LangChain and LangGraph (seconds), and modules that need only a type
or ``graphs.display`` should not pay for that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ChatOpsError,
    ConfigError,
    EmbeddedRedisFailed,
    EmptyTask,
    InvalidArguments,
    InvalidDecision,
    InvalidURL,
    LockLost,
    NotPending,
    OutboundError,
    OutboundFailed,
    OutboundRefused,
    RunBusy,
    RunPaused,
    ToolFailed,
    UnknownCheckpoint,
    UnknownRun,
)
from .keys import DEFAULT_PREFIX, DEFAULT_TTL_S, Keys
from .types import (
    Action,
    ActionRequest,
    Assessment,
    Cancelled,
    CheckpointInfo,
    Decision,
    DecisionType,
    Failed,
    Finished,
    PendingReview,
    ReviewConfig,
    ReviewDecided,
    ReviewRequest,
    ReviewRequested,
    ReviewResponse,
    RunEvent,
    RunResult,
    RunStatus,
    Token,
    ToolFinished,
    ToolMode,
    ToolProposed,
    ToolStarted,
    approve,
    edit,
    reject,
)

if TYPE_CHECKING:
    from .agent import build_graph
    from .builtin_tools import build_registry
    from .embedded_redis import EmbeddedRedis
    from .ledger import ExecutionLedger, MemoryLedger, RedisLedger
    from .locks import ThreadLocks
    from .outbound import HttpAllowlist, OutboundGuard
    from .policy import Policy, ToolRule
    from .run_index import MemoryRunIndex, RedisRunIndex, RunIndex
    from .runs import OnEvent, Runs
    from .runtime import Runtime, open_runtime
    from .settings import CoreSettings
    from .tools import RegisteredTool, ToolRegistry

# Loaded on first use: name -> the module of this package that defines it.
_LAZY = {
    "build_graph": "agent",
    "build_registry": "builtin_tools",
    "EmbeddedRedis": "embedded_redis",
    "ExecutionLedger": "ledger",
    "MemoryLedger": "ledger",
    "RedisLedger": "ledger",
    "ThreadLocks": "locks",
    "HttpAllowlist": "outbound",
    "OutboundGuard": "outbound",
    "Policy": "policy",
    "ToolRule": "policy",
    "MemoryRunIndex": "run_index",
    "RedisRunIndex": "run_index",
    "RunIndex": "run_index",
    "OnEvent": "runs",
    "Runs": "runs",
    "Runtime": "runtime",
    "open_runtime": "runtime",
    "CoreSettings": "settings",
    "RegisteredTool": "tools",
    "ToolRegistry": "tools",
}

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TTL_S",
    "Action",
    "ActionRequest",
    "Assessment",
    "Cancelled",
    "ChatOpsError",
    "CheckpointInfo",
    "ConfigError",
    "CoreSettings",
    "Decision",
    "DecisionType",
    "EmbeddedRedis",
    "EmbeddedRedisFailed",
    "EmptyTask",
    "ExecutionLedger",
    "Failed",
    "Finished",
    "HttpAllowlist",
    "InvalidArguments",
    "InvalidDecision",
    "InvalidURL",
    "Keys",
    "LockLost",
    "MemoryLedger",
    "MemoryRunIndex",
    "NotPending",
    "OnEvent",
    "OutboundError",
    "OutboundFailed",
    "OutboundGuard",
    "OutboundRefused",
    "PendingReview",
    "Policy",
    "RedisLedger",
    "RedisRunIndex",
    "RegisteredTool",
    "ReviewConfig",
    "ReviewDecided",
    "ReviewRequest",
    "ReviewRequested",
    "ReviewResponse",
    "RunBusy",
    "RunEvent",
    "RunIndex",
    "RunPaused",
    "RunResult",
    "RunStatus",
    "Runs",
    "Runtime",
    "ThreadLocks",
    "Token",
    "ToolFailed",
    "ToolFinished",
    "ToolMode",
    "ToolProposed",
    "ToolRegistry",
    "ToolRule",
    "ToolStarted",
    "UnknownCheckpoint",
    "UnknownRun",
    "approve",
    "build_graph",
    "build_registry",
    "edit",
    "open_runtime",
    "reject",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
