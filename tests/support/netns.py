"""Hosts made of Linux network namespaces (iproute2 ``ip netns``): tests/integration/test_hosts.py.

``Hosts.build()`` makes five namespaces whose names carry this process's id
(``cc<pid>-<n>-data``...), so that parallel runs never meet, and wires them
with veth pairs into two private LANs, each a bridge inside the ``lan``
namespace::

                      data  10.73.0.1
                        |
      backend LAN 10.73.0.0/24  (bridge br-back in "lan")
          |                              |
    node1  back 10.73.0.11         node2  back 10.73.0.12
           front 10.73.1.11               front 10.73.1.12
          |                              |
      frontend LAN 10.73.1.0/24  (bridge br-front in "lan")
                        |
                     client 10.73.1.100

These addresses exist only inside the namespaces: nothing is added to the
machine's own network namespace (no interface, no address, no route), and
no namespace has a route out. A node host reaches the data host on the
backend LAN and its clients on the frontend LAN, so cutting a node host's
backend link (``set_link(..., up=False)``) cuts it off from Redis and the
database while its clients stay connected.

A program runs on a host through ``Host.argv`` (``ip netns exec NAME ...``,
which execs the program: the pid we hold is the program's own). The test's
own sockets reach the frontend LAN through ``NamespaceThread``, one thread
that entered the client namespace (``setns(2)`` moves only the calling
thread; a socket stays in the namespace it was created in).

``Hosts.close()`` deletes every namespace it made (the veth pairs and bridges
go with them), trying each even when one fails; stop the processes running
in them first. Building or closing needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN); ``NamespacesUnavailable`` is raised only when the first
namespace cannot be made, with ``ip``'s own error.
"""

import ctypes
import itertools
import os
import socket
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from tests.support.timing import seconds

__all__ = [
    "BACKEND",
    "FRONTEND",
    "Host",
    "Hosts",
    "NamespaceThread",
    "NamespacesUnavailable",
]

#: The two private LANs (only inside the namespaces).
BACKEND = IPv4Network("10.73.0.0/24")
FRONTEND = IPv4Network("10.73.1.0/24")

_CLONE_NEWNET = 0x40000000
_IP_TIMEOUT = 10.0
_numbers = itertools.count(1)


class NamespacesUnavailable(Exception):
    """The first network namespace could not be made (not root, no ``ip``, no CAP_NET_ADMIN...)."""


def _ip(*args: str) -> None:
    """Run one ``ip`` command; raise RuntimeError with its error output if it fails."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=seconds(_IP_TIMEOUT)
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One namespace playing a host.

    Attributes:
        name: The namespace's name (``ip netns list``).
        back: Its address on the backend LAN, if it is on it.
        front: Its address on the frontend LAN, if it is on it.
    """

    name: str
    back: str | None = None
    front: str | None = None

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this host: ``ip netns exec NAME argv...``."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def prefix(self) -> tuple[str, ...]:
        """The command prefix of ``argv``, for helpers that take one."""
        return ("ip", "netns", "exec", self.name)


@dataclass
class Hosts:
    """The namespaces of one test run (see the module docstring).

    Attributes:
        data: Redis and the database.
        node1: The first node host.
        node2: The second node host.
        client: Where the test's clients connect from.
        lan: The switch: the two bridges and the LAN ends of the veth pairs.
    """

    data: Host
    node1: Host
    node2: Host
    client: Host
    lan: Host
    made: list[str] = field(default_factory=list)

    @classmethod
    def build(cls) -> "Hosts":
        """Make and wire the namespaces; on any failure delete what was made.

        Raises:
            NamespacesUnavailable: The first namespace could not be made.
            RuntimeError: A later ``ip`` command failed (a real failure).
        """
        base = f"cc{os.getpid()}-{next(_numbers)}"
        hosts = cls(
            data=Host(f"{base}-data", back=str(BACKEND[1])),
            node1=Host(f"{base}-node1", back=str(BACKEND[11]), front=str(FRONTEND[11])),
            node2=Host(f"{base}-node2", back=str(BACKEND[12]), front=str(FRONTEND[12])),
            client=Host(f"{base}-client", front=str(FRONTEND[100])),
            lan=Host(f"{base}-lan"),
        )
        try:
            _ip("netns", "add", hosts.lan.name)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise NamespacesUnavailable(str(exc)) from exc
        hosts.made.append(hosts.lan.name)
        try:
            hosts._wire()
        except BaseException:
            hosts.close()
            raise
        return hosts

    def _wire(self) -> None:
        lan = self.lan.name
        _ip("-n", lan, "link", "set", "lo", "up")
        for bridge in ("br-back", "br-front"):
            _ip("-n", lan, "link", "add", bridge, "type", "bridge")
            _ip("-n", lan, "link", "set", bridge, "up")
        for host, tag in (
            (self.data, "d"),
            (self.node1, "n1"),
            (self.node2, "n2"),
            (self.client, "c"),
        ):
            _ip("netns", "add", host.name)
            self.made.append(host.name)
            _ip("-n", host.name, "link", "set", "lo", "up")
            for side, address, network in (
                ("back", host.back, BACKEND),
                ("front", host.front, FRONTEND),
            ):
                if address is None:
                    continue
                # The LAN end is made in "lan" and its peer goes straight into the host.
                end = f"{tag}-{side}"
                _ip(
                    "-n",
                    lan,
                    "link",
                    "add",
                    end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    side,
                    "netns",
                    host.name,
                )
                _ip("-n", lan, "link", "set", end, "master", f"br-{side}")
                _ip("-n", lan, "link", "set", end, "up")
                _ip("-n", host.name, "addr", "add", f"{address}/{network.prefixlen}", "dev", side)
                _ip("-n", host.name, "link", "set", side, "up")

    def set_link(self, host: Host, side: str, *, up: bool) -> None:
        """Bring a host's own interface (``"back"`` or ``"front"``) up or down."""
        _ip("-n", host.name, "link", "set", side, "up" if up else "down")

    def close(self) -> None:
        """Delete every namespace made, last first; after trying all, raise the first failure."""
        failures: list[BaseException] = []
        while self.made:
            name = self.made.pop()
            try:
                _ip("netns", "delete", name)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def _enter(name: str) -> None:
    """Move the calling thread into the network namespace ``name`` (setns(2))."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class NamespaceThread:
    """One worker thread inside a host's namespace, to make sockets there.

    The test's other threads stay in the machine's namespace: only sockets
    created by ``connect`` live in the host's. ``close()`` ends the thread,
    which releases its hold on the namespace.
    """

    def __init__(self, host: Host) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{host.name}",
            initializer=_enter,
            initargs=(host.name,),
        )

    def connect(self, address: tuple[str, int], timeout: float) -> socket.socket:
        """A TCP connection to ``address``, made from inside the namespace.

        Args:
            address: Host and port, on one of the namespace's LANs.
            timeout: Seconds for the connect, and the socket's timeout afterwards.
        """
        future = self._executor.submit(socket.create_connection, address, timeout)
        return future.result(timeout=timeout + seconds(5))

    def close(self) -> None:
        """End the thread (waits for a connect in progress, which is bounded)."""
        self._executor.shutdown(wait=True)
