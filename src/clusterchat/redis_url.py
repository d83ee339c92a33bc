"""Redis URLs: a single server (``redis://``) or a Redis Cluster (``redis+cluster://``).

A cluster URL names one or more seed nodes, comma-separated, with optional
credentials shared by every node::

    redis+cluster://[[user]:password@]host:port[,host:port...][/]

The seeds are only where to learn the slot map from; the clients then talk to
whichever nodes the map names. Give several, so that one node down at start
does not stop a node from joining. Pure parsing: no I/O.
"""

from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["CLUSTER_SCHEME", "ClusterUrl", "is_cluster_url", "parse_cluster_url"]

CLUSTER_SCHEME = "redis+cluster"

Address = tuple[str, int]


@dataclass(frozen=True)
class ClusterUrl:
    """A parsed ``redis+cluster://`` URL.

    Attributes:
        seeds: ``(host, port)`` of every node named, in order.
        username: ACL user, if any.
        password: Password, if any.
    """

    seeds: tuple[Address, ...]
    username: str | None = None
    password: str | None = None

    def node_url(self, address: Address) -> str:
        """A plain ``redis://`` URL for one node of the cluster, with the credentials."""
        host, port = address
        if ":" in host:
            host = f"[{host}]"
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        elif self.username is not None:
            auth = f"{quote(self.username, safe='')}@"
        return f"redis://{auth}{host}:{port}/0"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``)."""
    return url.lower().startswith(f"{CLUSTER_SCHEME}://")


def parse_cluster_url(url: str) -> ClusterUrl:
    """Parse a ``redis+cluster://`` URL.

    Args:
        url: ``redis+cluster://[[user]:password@]host:port[,host:port...][/]``.

    Returns:
        The seeds and credentials.

    Raises:
        ValueError: Not a cluster URL, no seed, a seed without a valid port, or
            a database number other than 0 (a cluster has only database 0).
    """
    if not is_cluster_url(url):
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL")
    rest = url[len(CLUSTER_SCHEME) + 3 :]
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    seeds: list[Address] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster seed {item!r} is not host:port")
        seeds.append((host, int(port)))
    if not seeds:
        raise ValueError("a cluster URL needs at least one host:port")
    return ClusterUrl(tuple(seeds), username, password)
