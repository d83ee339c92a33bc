"""The name rules (``clusterchat/names.py``) as the service answers them: errno 13."""

from clusterchat import names
from clusterchat.protocol import ErrorCode
from clusterchat.service.errors import ChatError

__all__ = ["look_alike_key", "normalize"]


def normalize(name: str, field: str) -> str:
    """The name as it is stored and shown.

    Raises:
        ChatError: errno 13 naming the field and the refused character, or
            saying that the name became longer than the store holds.
    """
    try:
        return names.normalize(name)
    except names.NameRefused as exc:
        raise ChatError(ErrorCode.INVALID_FIELD, f"{field}: {exc}") from None


def look_alike_key(name: str) -> str:
    """The key that two names share when they could be taken for each other.

    Raises:
        ChatError: errno 13 if the key is longer than the store holds.
    """
    try:
        return names.look_alike_key(name)
    except names.NameRefused as exc:
        raise ChatError(ErrorCode.INVALID_FIELD, str(exc)) from None
