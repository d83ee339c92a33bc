"""The cluster under test: started by the bench, or a running one it targets.

An own cluster lives in a temporary directory: a private redis-server on a
free loopback port (persistence off), N ``clusterchat node`` processes sharing
one SQLite database and that Redis, and, with ``--via-nginx``, nginx
balancing TCP over them. Nodes run with cheap password hashing
(``NODE_ENV``: argon2 time cost 1, 1 MiB) so thousands of logins measure the
server rather than the hash, and with request-rate limits high enough not to
throttle the load (``--max-rate``/``max_burst`` 100000), and connection limits
above its own thousands of loopback connections. Everything is started
as a child in its own session and stopped by pid (``cluster.processes``).

A targeted cluster is only addresses: nothing is started or stopped, and the
node processes are unknown (no RSS figure).
"""

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.nginx import nginx_argv, render_nginx_conf
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_log, wait_for_port
from clusterchat.cluster.redis import redis_argv
from clusterchat_bench.commands import Endpoint

__all__ = ["NODE_ARGS", "NODE_ENV", "BenchCluster"]

HOST = "127.0.0.1"

#: Environment of the nodes the bench starts: hashing cheap enough for thousands of logins.
NODE_ENV: dict[str, str] = {
    "CLUSTERCHAT_ARGON2_TIME_COST": "1",
    "CLUSTERCHAT_ARGON2_MEMORY_KIB": "1024",
    "CLUSTERCHAT_MAX_BURST": "100000",
    # Thousands of users registered from one address, as fast as it can.
    "CLUSTERCHAT_REGISTRATIONS_PER_ADDRESS": "1000000",
}
#: Extra node arguments: no flood or connection limit in the way of the offered load.
NODE_ARGS: tuple[str, ...] = (
    "--max-rate",
    "100000",
    "--max-connections",
    "1000000",
    "--max-per-address",
    "1000000",
)

_READY = "listening on"
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
    """

    workdir: Path | None
    endpoints: list[Endpoint] = field(default_factory=list)
    redis_url: str | None = None
    front: Endpoint | None = None
    nodes: list[Child] = field(default_factory=list)
    redis: Child | None = None
    nginx: Child | None = None

    @property
    def own(self) -> bool:
        """Whether the bench started this cluster (and may read its processes)."""
        return self.workdir is not None

    @classmethod
    def target(cls, endpoints: list[Endpoint], redis_url: str | None) -> "BenchCluster":
        """A running cluster: nothing is started or stopped."""
        return cls(workdir=None, endpoints=endpoints, redis_url=redis_url)

    @classmethod
    def start(cls, workdir: Path, nodes: int, via_nginx: bool) -> "BenchCluster":
        """Start redis-server, ``nodes`` nodes and (optionally) nginx in ``workdir``.

        On failure everything started so far is stopped before the error propagates.

        Raises:
            ChildFailed: A child exited or did not become ready.
            MissingDependency: redis-server or nginx is not installed.
        """
        cluster = cls(workdir=workdir)
        try:
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
        """The SQLite database shared by the nodes of an own cluster."""
        assert self.workdir is not None
        return f"sqlite:///{self.workdir / 'chat.db'}"

    def _start_redis(self) -> None:
        assert self.workdir is not None
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        for attempt in range(1, _ATTEMPTS + 1):
            port = free_port(HOST)
            child = spawn(
                "redis", redis_argv(port, redis_dir, host=HOST), log_path=self.workdir / "redis.log"
            )
            try:
                wait_for_port(HOST, port, _READY_TIMEOUT, child)
            except ChildFailed:
                stop(child)
                if attempt == _ATTEMPTS:
                    raise
                continue
            self.redis = child
            self.redis_url = f"redis://{HOST}:{port}/0"
            return

    def start_node(self, name: str) -> tuple[Child, int]:
        """Start one more node of this cluster (same database and Redis).

        The caller owns the child: stop it, or append it to ``nodes`` so that
        ``stop()`` does.

        Returns:
            The ready node and its port.

        Raises:
            ChildFailed: It exited or did not become ready (after a few ports).
        """
        assert self.workdir is not None
        assert self.redis_url is not None
        env = {**os.environ, **NODE_ENV}
        for attempt in range(1, _ATTEMPTS + 1):
            port = free_port(HOST)
            argv = [sys.executable, "-m", "clusterchat", "node", "--host", HOST]
            argv += ["--port", str(port), "--db", self.db_url, "--redis", self.redis_url]
            argv += ["--node-id", name, *NODE_ARGS]
            child = spawn(name, argv, log_path=self.workdir / f"{name}.log", env=env)
            try:
                wait_for_log(child, _READY, _READY_TIMEOUT)
            except ChildFailed:
                stop(child)
                if attempt == _ATTEMPTS:
                    raise
                continue
            return child, port
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_nginx(self) -> None:
        assert self.workdir is not None
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        upstreams = [(e.host, e.port) for e in self.endpoints]
        for attempt in range(1, _ATTEMPTS + 1):
            port = free_port(HOST)
            conf = render_nginx_conf(
                prefix,
                listen=(HOST, port),
                upstreams=upstreams,
                worker_connections=_NGINX_CONNECTIONS,
            )
            (prefix / "nginx.conf").write_text(conf)
            child = spawn("nginx", nginx_argv(prefix), log_path=self.workdir / "nginx.log")
            try:
                wait_for_port(HOST, port, _READY_TIMEOUT, child)
            except ChildFailed:
                stop(child)
                if attempt == _ATTEMPTS:
                    raise
                continue
            self.nginx = child
            self.front = Endpoint(HOST, port)
            return

    def processes(self) -> dict[str, list[int]]:
        """The pids of the children still running, by name (for the CPU meter)."""
        children = [*self.nodes, self.redis, self.nginx]
        return {c.name: [c.pid] for c in children if c is not None and c.alive()}

    def stop(self) -> None:
        """Stop every child by pid: nginx, the nodes, then Redis (idempotent)."""
        if self.nginx is not None:
            stop(self.nginx, timeout=_STOP_TIMEOUT)
        for child in self.nodes:
            stop(child, timeout=_STOP_TIMEOUT)
        if self.redis is not None:
            stop(self.redis, timeout=_STOP_TIMEOUT)

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
