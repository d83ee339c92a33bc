"""Channel naming: bare bus channels (``user:42``) to backend channel names and back.

The service speaks bare names (``user:42``, ``group:7``, ``node:<id>``); a backend adds a
prefix so that several clusters (or several tests) can share one Redis:

* classic pub/sub: ``clusterchat:user:42``;
* sharded pub/sub (Redis Cluster, SPUBLISH/SSUBSCRIBE): ``clusterchat:{user:42}``.
  The bare name sits inside a hash tag, so the cluster hashes only ``user:42``
  and every publication to one user lands on the shard that owns that user,
  whatever the prefix.

Bare names may not contain ``{`` or ``}`` (they would break the hash tag), nor
be empty.
"""

__all__ = ["GROUPS_CHANNEL", "ChannelNames"]


#: The bare channel every node listens on for group membership changes.
GROUPS_CHANNEL = "groups"


class ChannelNames:
    """Turns bare channel names into prefixed backend names and back.

    Args:
        prefix: Namespace of this cluster on the backend (no braces, not empty).
        hash_tag: Wrap the bare name in ``{...}`` (for sharded pub/sub on Redis Cluster).

    Raises:
        ValueError: ``prefix`` is empty or contains a brace.
    """

    def __init__(self, prefix: str, *, hash_tag: bool = False) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"invalid channel prefix {prefix!r}")
        self.prefix = prefix
        self.hash_tag = hash_tag
        self._head = f"{prefix}:{{" if hash_tag else f"{prefix}:"
        self._tail = "}" if hash_tag else ""

    def full(self, bare: str) -> str:
        """The backend name of ``bare``.

        Args:
            bare: A bare channel name such as ``user:42``.

        Returns:
            The prefixed name, e.g. ``clusterchat:user:42`` or ``clusterchat:{user:42}``.

        Raises:
            ValueError: ``bare`` is empty or contains a brace.
        """
        if not bare or "{" in bare or "}" in bare:
            raise ValueError(f"invalid bare channel name {bare!r}")
        return f"{self._head}{bare}{self._tail}"

    def bare(self, full: str) -> str | None:
        """The bare name of a backend channel, or None if it is not one of ours.

        Args:
            full: A backend channel name, as Redis reports it.

        Returns:
            The bare name (``user:42``), or None for a name outside this prefix.
        """
        if not full.startswith(self._head) or not full.endswith(self._tail):
            return None
        bare = full[len(self._head) : len(full) - len(self._tail)]
        return bare or None

    @staticmethod
    def user(user_id: int) -> str:
        """The bare channel of a user: ``user:<id>``."""
        return f"user:{user_id}"

    @staticmethod
    def group(group_id: int) -> str:
        """The bare channel of a group's messages: ``group:<id>``."""
        return f"group:{group_id}"

    @staticmethod
    def node(node_id: str) -> str:
        """The bare channel of a node: ``node:<id>``."""
        return f"node:{node_id}"
