"""The cluster under test: started by the bench, or a running one it targets.

An own cluster lives in a temporary directory: a private redis-server on a
free loopback port, N ``clusterchat node`` processes sharing one database
(a SQLite file of its own; with ``--db``, a given URL or a private
PostgreSQL server, ``clusterchat_bench.database``) and that Redis, and, with
``--via-nginx``, nginx balancing TCP over them. With ``--node-workers W``
each node is ``clusterchat node --workers W``: a supervisor whose W worker
processes share the node's port; the node counts as ready once the
supervisor says all W listen, and its CPU figures include its workers (the
meter counts a process's children with it). Redis and the nodes are started
as ``clusterchat up`` starts them, by the same two functions
(``cluster.children.start_redis``/``start_node``, which build their command
lines with ``cluster.redis.redis_argv`` and
``cluster.node_command.node_argv``), so the bench measures what users run:
Redis with up's settings, nodes with the password hashing a node ships with.
Two things differ, and both are reported (``node_configuration``):

- ``RAISED_FOR_LOAD``: limits that would throttle the offered load (request
  rate, connections, registrations per address) are raised, through the
  nodes' ``CLUSTERCHAT_*`` environment;
- ``--cheap-hashing`` (off by default) gives the nodes cheap argon2
  parameters (``CHEAP_HASHING``), so that thousands of logins measure the
  server rather than the hash; login rates are then not a default node's.

Everything is started as a child in its own session and stopped by pid
(``cluster.processes``).

A targeted cluster is addresses: nothing is started or stopped. Its nodes'
processes are found on this machine from those addresses
(``clusterchat_bench.listeners``: the clusterchat processes listening on a
target's loopback port, or behind the nginx listening there, and the log
writer of their SQLite file) and
measured like the bench's own; elsewhere they are unknown. No RSS figure
for them either way.
"""

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterchat.cluster.children import start_node, start_redis
from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.launcher import upgrade_database
from clusterchat.cluster.log_writers import log_writer_pids as find_log_writers
from clusterchat.cluster.log_writers import stop_log_writers
from clusterchat.cluster.nginx import nginx_argv, render_nginx_conf
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_port
from clusterchat.settings import ENV_PREFIX, Settings, redact_url
from clusterchat_bench.commands import Endpoint
from clusterchat_bench.database import POSTGRES_SETTINGS, PrivatePostgres, database_kind
from clusterchat_bench.listeners import database_of, nodes_behind
from clusterchat_bench.options import PRIVATE_POSTGRESQL

__all__ = [
    "CHEAP_HASHING",
    "RAISED_FOR_LOAD",
    "BenchCluster",
    "node_configuration",
    "node_environment",
]

HOST = "127.0.0.1"

#: Node settings raised for load generation: the offered load comes from a few
#: loopback addresses, thousands of connections and registrations at once, as
#: fast as the load generator can; the defaults would throttle it.
RAISED_FOR_LOAD: dict[str, int] = {
    "max_rate": 100_000,
    "max_burst": 100_000,
    "max_connections": 1_000_000,
    "max_per_address": 1_000_000,
    "registrations_per_address": 1_000_000,
}
#: Node settings of ``--cheap-hashing``: argon2 cheap enough for thousands of logins.
CHEAP_HASHING: dict[str, int] = {"argon2_time_cost": 1, "argon2_memory_kib": 1024}


#: The CPU meter's name of the SQLite log writer process (it counts with the nodes).
LOG_WRITER = "log"


def log_writer_pids(db_url: str) -> list[int]:
    """Pids of the log writers of the SQLite database at ``db_url`` (none for others)."""
    if not db_url.startswith("sqlite:///"):
        return []
    return find_log_writers(db_url.removeprefix("sqlite:///"))


def node_environment(cheap_hashing: bool) -> dict[str, str]:
    """The ``CLUSTERCHAT_*`` variables the bench adds to its nodes' environment.

    Args:
        cheap_hashing: Add ``CHEAP_HASHING`` (``--cheap-hashing``).

    Returns:
        Variable name to value.
    """
    chosen = {**RAISED_FOR_LOAD, **(CHEAP_HASHING if cheap_hashing else {})}
    return {ENV_PREFIX + name.upper(): str(value) for name, value in chosen.items()}


def node_configuration(cheap_hashing: bool) -> dict[str, Any]:
    """How the bench's nodes differ from a default node, for the header and ``bench.json``.

    The settings in effect are read the way a node reads them
    (``Settings.load`` over the nodes' environment), so a ``CLUSTERCHAT_*``
    variable of the caller's shows up here too.

    Args:
        cheap_hashing: Whether ``--cheap-hashing`` was given.

    Returns:
        ``password_hashing`` (``cheap_hashing``, the argon2 parameters in
        effect and the defaults) and ``raised_for_load_generation`` (per
        setting, the default and the bench's value).
    """
    default = Settings()
    actual = Settings.load(environ={**os.environ, **node_environment(cheap_hashing)})
    hashing = ("argon2_time_cost", "argon2_memory_kib")
    return {
        "password_hashing": {
            "cheap_hashing": cheap_hashing,
            **{name: getattr(actual, name) for name in hashing},
            "defaults": {name: getattr(default, name) for name in hashing},
        },
        "raised_for_load_generation": {
            name: {"default": getattr(default, name), "bench": getattr(actual, name)}
            for name in RAISED_FOR_LOAD
        },
    }


_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_ATTEMPTS = 3
_NGINX_CONNECTIONS = 32768


@dataclass
class BenchCluster:
    """Where the load goes, and the processes behind it when the bench owns them.

    Attributes:
        workdir: Directory of databases, logs and configs (own cluster only).
        endpoints: The nodes' TCP addresses, in node order.
        redis_url: The cluster's Redis URL (None: unknown).
        front: nginx's address when ``--via-nginx``.
        nodes: The node children (empty for a targeted cluster).
        redis: The redis-server child.
        nginx: The nginx child.
        cheap_hashing: The nodes run with ``CHEAP_HASHING`` (``--cheap-hashing``).
        node_workers: Each node's ``--workers`` (``--node-workers``).
        database_url: The database given with ``--db URL`` (None: own SQLite
            file, or the private server's).
        postgres: The private PostgreSQL server of ``--db postgresql``.
    """

    workdir: Path | None
    endpoints: list[Endpoint] = field(default_factory=list)
    redis_url: str | None = None
    front: Endpoint | None = None
    nodes: list[Child] = field(default_factory=list)
    redis: Child | None = None
    nginx: Child | None = None
    cheap_hashing: bool = False
    node_workers: int = 1
    database_url: str | None = None
    postgres: PrivatePostgres | None = None
    #: A targeted cluster's node processes found on this machine, by name (``n1``...).
    found: dict[str, list[int]] = field(default_factory=dict)

    @property
    def own(self) -> bool:
        """Whether the bench started this cluster (and may read its processes)."""
        return self.workdir is not None

    @classmethod
    def target(cls, endpoints: list[Endpoint], redis_url: str | None) -> "BenchCluster":
        """A running cluster: nothing is started or stopped; its node processes
        are looked for on this machine (module docstring)."""
        nodes: list[list[int]] = []
        for endpoint in endpoints:
            nodes.extend(n for n in nodes_behind(endpoint.host, endpoint.port) if n not in nodes)
        return cls(
            workdir=None,
            endpoints=endpoints,
            redis_url=redis_url,
            found={f"n{i}": pids for i, pids in enumerate(nodes, start=1)},
        )

    @classmethod
    def start(
        cls,
        workdir: Path,
        nodes: int,
        via_nginx: bool,
        cheap_hashing: bool = False,
        node_workers: int = 1,
        db: str | None = None,
    ) -> "BenchCluster":
        """Start the database server (``--db postgresql``), redis-server, ``nodes`` nodes
        and (optionally) nginx in ``workdir``.

        On failure everything started so far is stopped before the error propagates.

        Args:
            workdir: Directory of the database, logs and configs.
            nodes: How many nodes.
            via_nginx: Start nginx in front of the nodes.
            cheap_hashing: Give the nodes ``CHEAP_HASHING`` (``--cheap-hashing``).
            node_workers: Each node's ``--workers``.
            db: ``--db``: None (a SQLite file in ``workdir``), ``PRIVATE_POSTGRESQL``
                or a database URL.

        Returns:
            The running cluster.

        Raises:
            ChildFailed: A child exited or did not become ready.
            MissingDependency: redis-server, nginx or PostgreSQL is not installed.
        """
        cluster = cls(workdir=workdir, cheap_hashing=cheap_hashing, node_workers=node_workers)
        try:
            if db == PRIVATE_POSTGRESQL:
                cluster.postgres = PrivatePostgres.start(workdir)
            elif db is not None:
                cluster.database_url = db
            upgrade_database(cluster.db_url)  # as `up` does, before any node starts
            cluster._start_redis()
            for number in range(1, nodes + 1):
                child, port = cluster.start_node(f"n{number}")
                cluster.nodes.append(child)
                cluster.endpoints.append(Endpoint(HOST, port))
            if via_nginx:
                cluster._start_nginx()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def db_url(self) -> str:
        """The database shared by the nodes of an own cluster."""
        assert self.workdir is not None
        if self.postgres is not None:
            return self.postgres.url
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.workdir / 'chat.db'}"

    def _start_redis(self) -> None:
        assert self.workdir is not None
        workdir = self.workdir
        child, port = _on_free_port(
            lambda port: start_redis(
                port,
                workdir / "redis",
                log_path=workdir / "redis.log",
                timeout=_READY_TIMEOUT,
                host=HOST,
            )
        )
        self.redis = child
        self.redis_url = f"redis://{HOST}:{port}/0"

    def start_node(self, name: str) -> tuple[Child, int]:
        """Start one more node of this cluster (same database and Redis).

        The caller owns the child: stop it, or append it to ``nodes`` so that
        ``stop()`` does. With ``node_workers`` above 1 it is the supervisor,
        returned once it says that all its workers listen.

        Returns:
            The ready node and its port.

        Raises:
            ChildFailed: It exited or did not become ready (after a few ports).
        """
        assert self.workdir is not None
        workdir = self.workdir
        env = {**os.environ, **node_environment(self.cheap_hashing)}
        workers = self.node_workers

        def start(port: int) -> Child:
            child = start_node(
                name,
                port,
                db_url=self.db_url,
                redis_url=self.redis_url,
                log_path=workdir / f"{name}.log",
                timeout=_READY_TIMEOUT,
                host=HOST,
                workers=workers,
                env=env,
            )
            return child  # every worker listens (start_node waits for node_ready)

        return _on_free_port(start)

    def _start_nginx(self) -> None:
        assert self.workdir is not None
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        upstreams = [(e.host, e.port) for e in self.endpoints]
        log_path = self.workdir / "nginx.log"

        def start(port: int) -> Child:
            conf = render_nginx_conf(
                prefix,
                listen=(HOST, port),
                upstreams=upstreams,
                worker_connections=_NGINX_CONNECTIONS,
            )
            (prefix / "nginx.conf").write_text(conf)
            child = spawn("nginx", nginx_argv(prefix), log_path=log_path)
            try:
                wait_for_port(HOST, port, _READY_TIMEOUT, child)
            except ChildFailed:
                stop(child)
                raise
            return child

        self.nginx, port = _on_free_port(start)
        self.front = Endpoint(HOST, port)

    def command_lines(self) -> dict[str, list[str]]:
        """The argv of each child still running, by name (recorded in ``bench.json``)."""
        children = [self.redis, *self.nodes, self.nginx]
        return {c.name: list(c.argv) for c in children if c is not None and c.alive()}

    def node_names(self) -> list[str]:
        """The CPU meter's names of the nodes (started, or found for a target)."""
        return [child.name for child in self.nodes] if self.own else list(self.found)

    def processes(self) -> dict[str, list[int]]:
        """The pids of the children still running (a target's nodes found), by name
        (for the CPU meter), and ``log``: the log writer of the nodes' SQLite file, if any."""
        if self.own:
            server = self.postgres.child if self.postgres is not None else None
            children = [*self.nodes, self.redis, self.nginx, server]
            running = {c.name: [c.pid] for c in children if c is not None and c.alive()}
            databases = {self.db_url}
        else:
            running = dict(self.found)
            databases = {db for pids in self.found.values() for db in map(database_of, pids) if db}
        writers = sorted({pid for db in databases for pid in log_writer_pids(db)})
        if writers:
            running[LOG_WRITER] = writers
        return running

    def database(self) -> dict[str, Any]:
        """What database the nodes share, for the header and ``bench.json`` (no password)."""
        url = self.db_url
        if self.postgres is not None:
            return {
                "kind": "postgresql",
                "url": url,
                "private_server": True,
                "server": self.postgres.version,
                "server_settings": list(POSTGRES_SETTINGS) or "PostgreSQL's defaults",
            }
        return {
            "kind": database_kind(url),
            "url": redact_url(url),
            "private_server": False,
            "given": self.database_url is not None,
        }

    def stop(self) -> None:
        """Stop every child by pid: nginx, the nodes, the log writer they started,
        Redis, the database server (idempotent)."""
        if self.nginx is not None:
            stop(self.nginx, timeout=_STOP_TIMEOUT)
        writers = log_writer_pids(self.db_url) if self.workdir is not None else []
        for child in self.nodes:
            stop(child, timeout=_STOP_TIMEOUT)
        stop_log_writers(writers, _STOP_TIMEOUT)
        if self.redis is not None:
            stop(self.redis, timeout=_STOP_TIMEOUT)
        if self.postgres is not None:
            self.postgres.stop()

    def keep_logs(self, dest: Path) -> list[Path]:
        """Copy the children's logs into ``dest`` (for reports of lost messages)."""
        if self.workdir is None:
            return []
        dest.mkdir(parents=True, exist_ok=True)
        copied = []
        for log in sorted(self.workdir.glob("*.log")):
            target = dest / log.name
            shutil.copyfile(log, target)
            copied.append(target)
        return copied


def _on_free_port(start: Callable[[int], Child]) -> tuple[Child, int]:
    """Call ``start`` with a free port, and again with another when it fails.

    Another process may take a port between ``free_port`` and the child's
    bind; ``start`` stops its child before raising.

    Returns:
        The ready child and its port.

    Raises:
        ChildFailed: ``start`` failed ``_ATTEMPTS`` times.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        port = free_port(HOST)
        try:
            return start(port), port
        except ChildFailed:
            if attempt == _ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
