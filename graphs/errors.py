"""Errors the runs API raises: each says what went wrong and what to do about it."""


class ChatOpsError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidDecision(ChatOpsError):
    """A review answer does not fit the pending review (count, allowed decision, or edited args)."""


class InvalidArguments(InvalidDecision):
    """Edited tool arguments fail the tool's schema. ``errors`` maps field name -> message."""

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


class ConfigError(ChatOpsError):
    """A setting is missing or malformed; the message names the variable."""
