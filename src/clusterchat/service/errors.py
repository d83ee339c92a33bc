"""ChatError: a request the chat rules refuse (docs/protocol.md §5).

The transport turns it into an error answer; the connection stays open.
"""

from clusterchat.protocol import ErrorCode

__all__ = ["ChatError"]


class ChatError(Exception):
    """A refusal with an ``errno`` and a message for the user."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
