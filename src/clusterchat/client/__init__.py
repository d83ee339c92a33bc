"""The async client library: ``ChatClient`` and the login-answer decoders.

The terminal client (``clusterchat.client.terminal``) and the benchmark are
built on it. It shares the wire types of ``clusterchat.protocol`` and imports
nothing of the server.
"""

from clusterchat.client.client import ChatClient, ChatClientError
from clusterchat.client.entries import friends, groups, offline_messages

__all__ = [
    "ChatClient",
    "ChatClientError",
    "friends",
    "groups",
    "offline_messages",
]
