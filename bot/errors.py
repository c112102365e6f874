"""Why the bot refuses a click, a dialog or a command: errors whose message is said to the person.

Every refusal is raised where it is found and said in one place (``SlackIO.run`` for work started by a click
or a mention, the listeners for dialogs and commands), always as a message only that person sees::

    graphs.errors.ChatOpsError
    └── Refused                 nothing was changed; the message says why and what the person can do
        ├── MalformedCard       a button value or dialog metadata that is not one of ours
        ├── UnknownRunRef       a run id, link or card naming no run the bot knows
        ├── StaleCard           the review was decided, replaced, cancelled or expired already
        ├── NotTheCard          the click came from somewhere else than the review's own card
        ├── ApprovalExpired     the review waited longer than the policy allows (it is closed now)
        ├── NotAnApprover       the person may not decide (some of) these calls
        ├── DialogRefused       a dialog the bot did not open for this person, or already submitted
        └── BadCommand          a /chatops command the bot cannot read
"""

from __future__ import annotations

from graphs.errors import ChatOpsError

__all__ = [
    "ApprovalExpired",
    "BadCommand",
    "DialogRefused",
    "MalformedCard",
    "NotAnApprover",
    "NotTheCard",
    "Refused",
    "StaleCard",
    "UnknownRunRef",
]


class Refused(ChatOpsError):
    """A request that changes nothing; ``str(error)`` is what the person is told."""


class MalformedCard(Refused):
    def __init__(self, detail: str = "") -> None:
        self.detail = detail  # for the log: what was wrong with it
        super().__init__("That button is not one of mine; nothing was changed.")


class UnknownRunRef(Refused):
    pass


class StaleCard(Refused):
    def __init__(self) -> None:
        super().__init__(
            "This card is no longer current: it was already decided, replaced by a newer card, or the run ended."
        )


class NotTheCard(Refused):
    def __init__(self) -> None:
        super().__init__(
            "That button is not on this run's approval card; nothing was changed. Use the card in the run's thread."
        )


class ApprovalExpired(Refused):
    def __init__(self) -> None:
        super().__init__("This approval expired before anyone decided; ask again if it is still needed.")


class NotAnApprover(Refused):
    pass


class DialogRefused(Refused):
    def __init__(self) -> None:
        super().__init__(
            "This dialog is not one I opened for you, or it was already submitted; close it and use the card."
        )


class BadCommand(Refused):
    pass
