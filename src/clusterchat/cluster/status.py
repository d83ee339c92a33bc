"""``clusterchat status``: live nodes and their online users, read from Redis presence."""

import secrets

from clusterchat.presence.base import NodeInfo
from clusterchat.settings import Settings

__all__ = ["format_status", "read_status"]


async def read_status(redis_url: str, prefix: str) -> list[NodeInfo]:
    """Every live node of the cluster using ``redis_url`` with channel/key ``prefix``."""
    from clusterchat.presence.redis import RedisPresence

    defaults = Settings()  # the reader only reads: a node's default timing
    reader = RedisPresence(
        redis_url,
        node_id=f"status-{secrets.token_hex(3)}",
        address="",
        prefix=prefix,
        heartbeat_interval=defaults.presence_heartbeat,
        expiry=defaults.presence_expiry,
    )
    try:
        return await reader.nodes()
    finally:
        await reader.close()


def format_status(nodes: list[NodeInfo]) -> str:
    """A table for people: one line per node, then its users."""
    if not nodes:
        return "no live nodes"
    lines = [f"{'node':<16} {'address':<22} users online"]
    for node in sorted(nodes, key=lambda n: n.node_id):
        lines.append(f"{node.node_id:<16} {node.address:<22} {len(node.users)}")
        if node.users:
            lines.append("    online: " + ", ".join(str(uid) for uid in sorted(node.users)))
    total = sum(len(n.users) for n in nodes)
    lines.append(f"{len(nodes)} live node(s), {total} online user(s)")
    return "\n".join(lines)
