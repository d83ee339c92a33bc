"""ChatError: a request the chat rules refuse (docs/protocol.md §5).

The service turns it into an error answer; the connection stays open unless
``disconnect`` says otherwise (the answer goes out first).
"""

from clusterchat.protocol import ErrorCode

__all__ = ["ChatError"]


class ChatError(Exception):
    """A refusal with an ``errno`` and a message for the user.

    Args:
        code: The ``errno``.
        message: The ``errmsg``.
        retry_after: Seconds after which trying again may succeed (errno 18).
        disconnect: Close the connection after the answer.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: int | None = None,
        disconnect: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.disconnect = disconnect
