"""BenchOptions: what one ``clusterchat bench`` run measures, and how big.

The command line gives strings (comma lists, ``HOST:PORT`` lists); this module
turns them into one frozen value, filling what was not given from the default
sizes, or from the small ``--quick`` sizes (every scenario in under a minute on
two cores). Nothing here starts anything.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "PRIVATE_POSTGRESQL",
    "QUICK",
    "SCENARIOS",
    "BenchOptions",
    "parse_endpoints",
    "parse_ints",
]

#: Every scenario, in the order a run performs them.
SCENARIOS: tuple[str, ...] = ("ceiling", "connect", "pairs", "groups", "offline", "idle")

#: ``--db postgresql``: the bench starts a private PostgreSQL server for the run.
PRIVATE_POSTGRESQL = "postgresql"


def _default_workers() -> int:
    # Half the cores drive load; the other half runs the nodes and Redis.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True)
class BenchOptions:
    """The parameters of one run (``docs/performance.md`` explains each scenario).

    Attributes:
        scenarios: Which scenarios to run (a subset of ``SCENARIOS``), run in that order.
        nodes: Node processes of the cluster the bench starts.
        users: Users of ``connect`` and ``pairs`` (even: ``pairs`` pairs them).
        step_seconds: How long each offered rate of ``pairs`` and ``groups`` lasts.
        drain_seconds: The most a step waits after its last send for deliveries.
        rates: Offered one-to-one messages per second, one step each, ascending.
        groups: Groups of the ``groups`` scenario.
        group_size: Members per group, the sender included.
        group_rates: Offered member-messages per second (group messages times
            the members that receive each), one step each, ascending.
        offline: Messages stored for the ``offline`` user before it logs in.
        idle: Idle logged-in connections on one node.
        quick: Small sizes everywhere: a smoke run (the smoke test's), judged by nothing.
        cheap_hashing: The nodes the bench starts hash passwords with cheap
            argon2 parameters instead of a node's defaults (reported as such).
        node_workers: Each node the bench starts runs ``clusterchat node
            --workers node_workers`` (1: one process; more: a supervisor and
            that many node processes sharing the node's port).
        db: The database of the cluster the bench starts: None, its own
            SQLite file; ``PRIVATE_POSTGRESQL``, a private PostgreSQL server
            the bench starts and stops; otherwise a database URL to use.
        via_nginx: Clients connect through nginx instead of to chosen nodes.
        targets: Nodes of a running cluster to drive instead of starting one.
        redis: That cluster's Redis URL (``ceiling`` measures it).
        out: Directory for ``bench.json``, ``bench.png`` and the node logs.
        workers: Load-generator processes.
        ceiling_requests: PUBLISH commands per ceiling measurement.
        p99_limit_ms: p99 above which a step does not count as sustainable.
        argv: The command line, recorded in ``bench.json``.
    """

    scenarios: tuple[str, ...] = SCENARIOS
    nodes: int = 2
    users: int = 2000
    step_seconds: float = 5.0
    drain_seconds: float = 5.0
    rates: tuple[int, ...] = (1000, 2000, 5000, 10000, 20000, 40000, 80000, 160000)
    groups: int = 20
    group_size: int = 100
    group_rates: tuple[int, ...] = (10000, 20000, 50000, 100000, 200000, 400000)
    offline: int = 1000
    idle: int = 10000
    quick: bool = False
    cheap_hashing: bool = False
    node_workers: int = 1
    db: str | None = None
    via_nginx: bool = False
    targets: tuple[tuple[str, int], ...] = ()
    redis: str | None = None
    out: Path = Path("bench-out")
    workers: int = field(default_factory=_default_workers)
    ceiling_requests: int = 200_000
    p99_limit_ms: float = 100.0
    argv: tuple[str, ...] = ()

    @property
    def own_cluster(self) -> bool:
        """Whether the bench starts (and stops) the cluster itself."""
        return not self.targets

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], argv: Sequence[str] = ()) -> "BenchOptions":
        """Build the options from parsed command-line flags (None means "not given").

        String flags: ``scenario`` (comma list), ``rates`` and ``group_rates``
        (comma lists of integers), ``target`` (comma list of ``HOST:PORT``).

        Raises:
            ValueError: A flag is malformed or out of range; the message says which.
        """
        given: dict[str, Any] = {}
        if flags.get("scenario"):
            given["scenarios"] = _parse_scenarios(str(flags["scenario"]))
        for name in ("rates", "group_rates"):
            if flags.get(name):
                given[name] = parse_ints(str(flags[name]), name)
        if flags.get("target"):
            given["targets"] = parse_endpoints(str(flags["target"]))
        known = {f.name for f in fields(cls)}
        for name, value in flags.items():
            if name in known and name not in given and value is not None:
                given[name] = value
        quick = bool(given.get("quick", False))
        options = replace(QUICK if quick else cls(), **given, argv=tuple(argv))
        options.validate()
        return options

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first option out of range."""
        positive = {
            "nodes": self.nodes,
            "users": self.users,
            "step_seconds": self.step_seconds,
            "drain_seconds": self.drain_seconds,
            "groups": self.groups,
            "offline": self.offline,
            "idle": self.idle,
            "workers": self.workers,
            "node_workers": self.node_workers,
            "ceiling_requests": self.ceiling_requests,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.users < 2 or self.users % 2:
            raise ValueError(f"--users must be even and at least 2 (pairs), got {self.users}")
        if self.group_size < 2:
            raise ValueError(f"--group-size must be at least 2, got {self.group_size}")
        if self.targets and not self.redis and "ceiling" in self.scenarios:
            raise ValueError("--target needs --redis URL for the ceiling scenario")
        if self.targets and self.via_nginx:
            raise ValueError("--via-nginx applies to the cluster the bench starts, not --target")
        if self.targets and self.cheap_hashing:
            raise ValueError(
                "--cheap-hashing applies to the cluster the bench starts, not --target"
            )
        if self.targets and self.node_workers != 1:
            raise ValueError("--node-workers applies to the cluster the bench starts, not --target")
        if self.targets and self.db is not None:
            raise ValueError("--db applies to the cluster the bench starts, not --target")
        if self.db is not None and self.db != PRIVATE_POSTGRESQL and "://" not in self.db:
            raise ValueError(
                f"--db: expected a database URL (sqlite:///..., postgresql://...,"
                f" mysql://...) or {PRIVATE_POSTGRESQL!r}, got {self.db!r}"
            )


def _parse_scenarios(text: str) -> tuple[str, ...]:
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise ValueError(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}"
        )
    return tuple(name for name in SCENARIOS if name in wanted)


def parse_ints(text: str, name: str = "value") -> tuple[int, ...]:
    """Parse ``"1000,2000,5000"`` into ascending positive integers.

    Raises:
        ValueError: Not a comma list of positive integers.
    """
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: expected integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"--{name.replace('_', '-')}: expected positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def parse_endpoints(text: str) -> tuple[tuple[str, int], ...]:
    """Parse ``"127.0.0.1:6000,127.0.0.1:6001"`` into (host, port) pairs.

    Raises:
        ValueError: An entry is not ``HOST:PORT``.
    """
    result = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--target: expected HOST:PORT, got {part!r}")
        result.append((host.strip("[]"), int(port)))
    return tuple(result)


#: The sizes of ``--quick``; flags given with it still win.
QUICK = BenchOptions(
    users=50,
    step_seconds=1.0,
    drain_seconds=2.0,
    rates=(200, 500),
    groups=2,
    group_size=10,
    group_rates=(200, 500),
    offline=100,
    idle=200,
    quick=True,
    ceiling_requests=20_000,
)
