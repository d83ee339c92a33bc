"""``idle``: C logged-in idle connections on one node; the node's RSS per connection.

With a cluster of its own the bench starts a dedicated node for this (same
database and Redis), reads its ``VmRSS`` from ``/proc/PID/status`` once it is
ready, registers and logs in C users on it (each on its own connection, left
open and silent), reads ``VmRSS`` again, and divides the growth by the
connections; below ``FEW_IDLE_CONNECTIONS`` the figure says it comes from
too few connections to be a per-connection cost. Against ``--target`` the
first node is used and no RSS can be read. More than ``_PER_SOURCE``
connections are spread over several source addresses (127.0.0.1,
127.0.0.2, ...), each of which has its own ~28k ephemeral ports. Children
inherit the raised open-file limit; C is capped below it, with a note, when
the hard limit is too low.

With ``--node-workers W`` above 1 the dedicated node is a supervisor and W
workers (the kernel spreads the connections over them): its RSS is the sum
of theirs (``family_rss_kib``; pages they share count once per process).
"""

import resource
from dataclasses import dataclass
from pathlib import Path

from clusterchat.cluster.processes import stop
from clusterchat_bench.commands import Close, Done, Endpoint, UserSpec
from clusterchat_bench.cpu import family
from clusterchat_bench.scenarios.connect import PhaseFigures, connect_users
from clusterchat_bench.scenarios.context import ScenarioContext, deal

__all__ = ["FEW_IDLE_CONNECTIONS", "IdleFigures", "family_rss_kib", "rss_kib", "run_idle"]

#: Fewer idle connections than this make a poor per-connection figure: the
#: node's fixed costs and the allocator's steps weigh more than the connections.
FEW_IDLE_CONNECTIONS = 5000

POOL = "idle"
_PER_SOURCE = 20_000
_SPARE_FILES = 256


@dataclass(frozen=True)
class IdleFigures:
    """The ``idle`` scenario's figures (RSS None when the node is not ours)."""

    connections: int
    node: str
    register: PhaseFigures
    login: PhaseFigures
    rss_before_kib: int | None
    rss_after_kib: int | None
    bytes_per_connection: float | None
    source_addresses: tuple[str, ...]
    open_file_limit: int
    note: str


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB, from ``/proc/PID/status``.

    Raises:
        OSError: The process is gone (or this is not Linux).
        ValueError: No ``VmRSS`` line.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def family_rss_kib(pid: int) -> int:
    """The summed RSS in KiB of process ``pid`` and its children (a node and its workers).

    Raises:
        OSError: ``pid`` is gone (or this is not Linux).
        ValueError: No ``VmRSS`` line.
    """
    total = rss_kib(pid)
    for child in family(pid)[1:]:
        try:
            total += rss_kib(child)
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


def run_idle(ctx: ScenarioContext) -> IdleFigures:
    """Hold C logged-in idle connections on one node and measure its memory."""
    wanted = ctx.options.idle
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    count = min(wanted, limit - _SPARE_FILES)
    note = "" if count == wanted else f"capped at {count} by the open-file limit {limit}"
    child = None
    if ctx.cluster.own:
        child, port = ctx.cluster.start_node("idle")
        endpoint = Endpoint("127.0.0.1", port)
        node = f"dedicated node 'idle' (pid {child.pid})"
    else:
        endpoint = ctx.cluster.endpoints[0]
        node = f"{endpoint} (target: RSS not measured)"
    try:
        before = family_rss_kib(child.pid) if child is not None else None
        sources = tuple(f"127.0.0.{1 + n}" for n in range(-(-count // _PER_SOURCE)))
        spread = len(sources) > 1
        units = [
            [UserSpec(f"{ctx.token}-i{n}", endpoint, sources[n // _PER_SOURCE] if spread else None)]
            for n in range(count)
        ]
        hands = deal(units, len(ctx.workers))
        try:
            register, login = connect_users(ctx, POOL, hands, "idle")
            after = family_rss_kib(child.pid) if child is not None else None
        finally:
            ctx.workers.call([Close(POOL)] * len(ctx.workers), Done, timeout=120.0)
    finally:
        if child is not None:
            stop(child, timeout=30.0)
    per_connection = None
    if before is not None and after is not None and login.succeeded:
        per_connection = (after - before) * 1024 / login.succeeded
        if login.succeeded < FEW_IDLE_CONNECTIONS:
            few = (
                f"from {login.succeeded:,} connections only: too few for a per-connection"
                f" cost (use --idle {FEW_IDLE_CONNECTIONS:,} or more)"
            )
            note = f"{note}; {few}" if note else few
    return IdleFigures(
        connections=count,
        node=node,
        register=register,
        login=login,
        rss_before_kib=before,
        rss_after_kib=after,
        bytes_per_connection=per_connection,
        source_addresses=sources if len(sources) > 1 else ("127.0.0.1",),
        open_file_limit=limit,
        note=note,
    )
