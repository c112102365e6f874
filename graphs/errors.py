"""Every error the core raises on purpose: each says what went wrong and what to do about it.

The whole tree::

    ChatOpsError                anything this package raises on purpose
    ├── ConfigError             a setting is missing or malformed; the message names the variable
    ├── EmbeddedRedisFailed     REDIS_URL is unset and the embedded Redis did not start; the message has its log
    ├── EmptyTask               a task with nothing to do
    ├── InvalidDecision         a review answer does not fit the pending review (count, decision type, tool)
    │   └── InvalidArguments    edited arguments fail the tool's schema or its own check; ``errors`` per field
    ├── NotPending              the review answered is no longer pending (decided, rewound, cancelled, expired)
    ├── RunBusy                 another process (or click) holds the thread right now
    │   └── LockLost            this process could not keep its lock on a thread and stopped working on it
    ├── RunPaused               the thread waits for a review; decide or cancel it before a new task
    ├── UnknownRun              no run exists for this thread id
    ├── UnknownCheckpoint       the checkpoint id is not in this thread's history
    ├── ToolFailed              a tool ran and failed; the model reads the message (it never leaves the run)
    └── OutboundError           a fetch a tool asked for was refused or got no HTTP answer (graphs.outbound)
        ├── OutboundRefused     the target is not allowed; nothing was sent
        │   └── InvalidURL      the URL cannot be checked (malformed, not http(s), credentials in it)
        └── OutboundFailed      no HTTP answer; the message is the same whatever the cause

Errors of code calling this package wrongly (a bad constructor argument, ``ThreadLocks.hold()`` outside a task)
stay ``ValueError``/``RuntimeError``: they are bugs to fix, not messages for a person.
"""

__all__ = [
    "ChatOpsError",
    "ConfigError",
    "EmbeddedRedisFailed",
    "EmptyTask",
    "InvalidArguments",
    "InvalidDecision",
    "InvalidURL",
    "LockLost",
    "NotPending",
    "OutboundError",
    "OutboundFailed",
    "OutboundRefused",
    "RunBusy",
    "RunPaused",
    "ToolFailed",
    "UnknownCheckpoint",
    "UnknownRun",
]


class ChatOpsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ChatOpsError):
    """A setting is missing or malformed; the message names the variable."""


class EmbeddedRedisFailed(ChatOpsError):
    """REDIS_URL is not set and the embedded Redis server did not start (or did not answer); the message quotes
    its log. Set REDIS_URL to a Redis 8 server, or fix what the log says."""


class EmptyTask(ChatOpsError):
    """A task was started with nothing in it: say what you want done."""


class InvalidDecision(ChatOpsError):
    """A review answer does not fit the pending review (count, allowed decision, or edited args)."""


class InvalidArguments(InvalidDecision):
    """Edited tool arguments fail the tool's schema or its own check. ``errors`` maps field name -> message."""

    def __init__(self, tool: str, errors: dict[str, str]) -> None:
        self.tool = tool
        self.errors = errors
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
        super().__init__(f"invalid arguments for {tool}: {detail}")


class NotPending(ChatOpsError):
    """The review being answered is no longer pending (already decided, rewound, cancelled or expired)."""


class RunBusy(ChatOpsError):
    """Another process (or click) holds this thread right now."""


class LockLost(RunBusy):
    """This process could not keep its lock on a thread (it expired unextended, or another holder has it) and
    stopped working on the thread before the lock could pass to someone else; another process may carry on."""


class RunPaused(ChatOpsError):
    """The thread waits for a review; a new task cannot start until it is decided or cancelled."""


class UnknownRun(ChatOpsError):
    """No run exists for this thread id."""


class UnknownCheckpoint(ChatOpsError):
    """The checkpoint id is not in this thread's history."""


class ToolFailed(ChatOpsError):
    """A tool ran but its outcome is a failure the model should see (non-zero exit, HTTP error...).

    Raised inside a tool; the execute step turns it into the call's result, so it never reaches a caller of Runs.
    """


class OutboundError(ChatOpsError):
    """A fetch a tool asked for was refused or got no HTTP answer."""


class OutboundRefused(OutboundError):
    """The target is not allowed (internal, not http(s), credentials in the URL, needs approval); nothing was sent."""


class InvalidURL(OutboundRefused):
    """A URL that cannot be checked; the message is the reason told to the model and the thread."""


class OutboundFailed(OutboundError):
    """No HTTP answer. The message never says why: refused, reset, timeout, TLS or a banner all read the same,
    so the result cannot be used to tell an open port from a closed one."""


class ModelProblem(ChatOpsError):
    """The model could not be used, or answered in a way the bot cannot act on; the message says what to fix (which
    variable, which server flag)."""
