"""The node processes of a running cluster (``--target``), found from its addresses in ``/proc``.

A targeted cluster is only addresses, but on this machine its nodes can be
found: the processes that hold a listening socket on a target's port
(``/proc/net/tcp`` and ``tcp6`` give the socket's inode for the port,
``/proc/PID/fd`` who holds it; with ``--workers`` several processes share the
port, and all of them count). A process counts as a node only if its command
line runs ``clusterchat node`` (a target port that is nginx's is not a node).
A target port that nginx holds (an ``up`` cluster's front door) leads to
the nodes behind it: the nginx master's command line names its
configuration (``-c``, relative to ``-p``), and every ``server host:port``
of its ``upstream`` blocks is looked up in turn (a node's TCP and HTTP ports
lead to the same processes, which count once). The node's ``--db`` names
its database; for a SQLite file, the log writer of that file counts with
the nodes, as in the bench's own cluster. Nothing is found for a host that
is not this machine's, for another user's processes, for an nginx
configuration that cannot be read, or off Linux: the CPU figures then stay
the machine's and ``others``.
"""

import contextlib
import ipaddress
import itertools
import re
from pathlib import Path

__all__ = ["database_of", "listening_pids", "node_pids", "nodes_behind", "upstreams"]

_LISTEN = "0A"


def _listening_inodes(port: int, proc: Path) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any local address)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listening_pids(port: int, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the processes holding a socket that listens on TCP ``port``, sorted."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    if not wanted:
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name in wanted:
                        found.append(int(entry.name))
                        break
    return sorted(found)


def _argv(pid: int, proc: Path) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def node_pids(host: str, port: int, proc: Path = Path("/proc")) -> list[int]:
    """The clusterchat processes listening on ``port``, if ``host`` is this machine's loopback."""
    if not _is_local(host):
        return []
    return [pid for pid in listening_pids(port, proc) if _is_node(_argv(pid, proc))]


def _is_node(argv: list[str]) -> bool:
    """Whether a command line runs ``clusterchat node``: ``python -m clusterchat
    node ...`` or the ``clusterchat`` program's ``node``. (Not any mention of
    clusterchat: nginx's names ``up``'s ``clusterchat-run`` directory.)"""
    for index, part in enumerate(argv[:-1]):
        program = part == "clusterchat" and index > 0 and argv[index - 1] == "-m"
        if (program or Path(part).name == "clusterchat") and argv[index + 1] == "node":
            return True
    return False


def nodes_behind(host: str, port: int, proc: Path = Path("/proc")) -> list[list[int]]:
    """The nodes a target address leads to, each as its processes' pids.

    A node's own port: that node. nginx's port: the nodes of its upstreams,
    in the order its configuration lists them (module docstring).
    """
    if not _is_local(host):
        return []
    listening = listening_pids(port, proc)
    own = [pid for pid in listening if _is_node(_argv(pid, proc))]
    if own:
        return [own]
    nodes: list[list[int]] = []
    configurations = {c for pid in listening if (c := _nginx_conf(pid, proc))}
    for configuration in sorted(configurations):
        try:
            text = configuration.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for upstream_host, upstream_port in upstreams(text):
            pids = node_pids(upstream_host, upstream_port, proc)
            if pids and pids not in nodes:
                nodes.append(pids)
    return nodes


def _nginx_conf(pid: int, proc: Path) -> Path | None:
    """The configuration file of an nginx master process (None: not one).

    nginx rewrites its command line as one string, ``nginx: master process
    <argv joined by spaces>``, so it is split again on spaces (a path with a
    space in it is not found).
    """
    words = " ".join(_argv(pid, proc)).split()
    if words[:3] != ["nginx:", "master", "process"]:
        return None
    argv = words[3:]
    options = dict(itertools.pairwise(argv))
    configuration = options.get("-c")
    if configuration is None:
        return None
    path = Path(configuration)
    if not path.is_absolute():
        path = Path(options.get("-p", "/etc/nginx/")) / path
    return path


_UPSTREAM = re.compile(r"\bupstream\s+\S+\s*\{([^}]*)\}")
_SERVER = re.compile(r"^\s*server\s+([^\s;]+)", re.MULTILINE)


def upstreams(configuration: str) -> list[tuple[str, int]]:
    """The ``host:port`` of every ``server`` in the ``upstream`` blocks of an
    nginx configuration, in order (unix sockets and addresses without a port
    are left out)."""
    found = []
    for block in _UPSTREAM.finditer(configuration):
        for address in _SERVER.findall(block.group(1)):
            host, _, port = address.rpartition(":")
            if host and port.isdigit() and not host.startswith("unix"):
                found.append((host.strip("[]"), int(port)))
    return found


def database_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The ``--db`` of the node process ``pid``'s command line (None: not given, or gone)."""
    argv = _argv(pid, proc)
    for index, part in enumerate(argv):
        if part == "--db" and index + 1 < len(argv):
            return argv[index + 1]
        if part.startswith("--db="):
            return part.removeprefix("--db=")
    return None
