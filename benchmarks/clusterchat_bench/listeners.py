"""The node processes of a running cluster (``--target``), found from its addresses in ``/proc``.

A targeted cluster is only addresses, but on this machine its nodes can be
found: the processes that hold a listening socket on a target's port
(``/proc/net/tcp`` and ``tcp6`` give the socket's inode for the port,
``/proc/PID/fd`` who holds it; with ``--workers`` several processes share the
port, and all of them count). A process counts as a node only if its command
line says it runs clusterchat (a target port that is nginx's is not a node).
The node's ``--db`` names its database; for a SQLite file, the log writer of
that file counts with the nodes, as in the bench's own cluster. Nothing is
found for a host that is not this machine's, for another user's processes,
or off Linux: the CPU figures then stay the machine's and ``others``.
"""

import contextlib
import ipaddress
from pathlib import Path

__all__ = ["database_of", "listening_pids", "node_pids"]

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


def node_pids(host: str, port: int, proc: Path = Path("/proc")) -> list[int]:
    """The clusterchat processes listening on ``port``, if ``host`` is this machine's loopback."""
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if not local:
        return []
    return [
        pid
        for pid in listening_pids(port, proc)
        if any("clusterchat" in part for part in _argv(pid, proc))
    ]


def database_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The ``--db`` of the node process ``pid``'s command line (None: not given, or gone)."""
    argv = _argv(pid, proc)
    for index, part in enumerate(argv):
        if part == "--db" and index + 1 < len(argv):
            return argv[index + 1]
        if part.startswith("--db="):
            return part.removeprefix("--db=")
    return None
