"""pytest plugin: a real Redis Cluster (3 primaries, one replica each), stopped by pid.

Six ``redis-server --cluster-enabled yes`` processes, each in a private
directory on a free loopback port (whose cluster bus port, port + 10000, is
free too), joined by ``redis-cli --cluster create ... --cluster-replicas 1
--cluster-yes``; the fixture returns once every node reports
``cluster_state:ok`` and agrees on the slot map. ``cluster-node-timeout`` is
1000 ms, so a SIGKILLed primary is replaced by its replica within a few
seconds.

* ``redis_cluster``: a cluster for this test only (it may kill its nodes).
* ``shared_redis_cluster``: one cluster for the whole session, for tests that
  only talk to it (each test uses its own prefix).

The helpers block (they poll and run ``redis-cli``): from async code call them
through ``asyncio.to_thread``. At teardown every process is stopped by pid and
asserted gone.
"""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.redis import redis_argv
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

__all__ = ["ClusterNode", "RedisCluster", "redis_cluster", "shared_redis_cluster"]

_HOST = "127.0.0.1"
_SIZE = 6
_NODE_TIMEOUT_MS = 1000
_ATTEMPTS = 3


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    dir: Path
    child: processes.Child

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    def cli(self, *args: str) -> str:
        """Run ``redis-cli -p PORT ARGS...`` against this node; its output.

        Raises:
            subprocess.CalledProcessError: redis-cli failed (e.g. the node is down).
        """
        return _cli("-h", _HOST, "-p", str(self.port), *args)

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` (or ``CLUSTER INFO`` for ``"cluster-info"``) as a dict of strings."""
        text = (
            self.cli("CLUSTER", "INFO") if section == "cluster-info" else self.cli("INFO", section)
        )
        fields: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.strip().partition(":")
            if sep and not name.startswith("#"):
                fields[name] = value
        return fields

    def alive(self) -> bool:
        return self.child.alive()


@dataclass
class RedisCluster:
    """A running cluster: ``nodes`` in creation order (the first three start as primaries)."""

    nodes: list[ClusterNode]
    killed: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def primaries(self) -> list[ClusterNode]:
        """The live nodes that are primaries right now (by their own ``INFO replication``)."""
        return [n for n in self.live() if n.info("replication").get("role") == "master"]

    def owner(self, slot: int) -> ClusterNode:
        """The live primary serving ``slot`` (by ``CLUSTER SHARDS`` of a live node)."""
        for node in self.primaries():
            for start, end in _own_slots(node):
                if start <= slot <= end:
                    return node
        raise AssertionError(f"no live primary serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """The live replica replicating ``primary``."""
        for node in self.live():
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_port") == str(
                primary.port
            ):
                return node
        raise AssertionError(f"{primary.address} has no live replica")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node`` and reap it (a crash: no goodbye to anyone)."""
        processes.kill(node.child)
        self.killed.append(node)

    def pause(self, node: ClusterNode) -> None:
        """Freeze ``node`` with SIGSTOP (sockets stay open, nothing is answered)."""
        processes.pause(node.child)

    def resume(self, node: ClusterNode) -> None:
        """Continue a node frozen by ``pause``."""
        processes.resume(node.child)

    def promoted(self, replica: ClusterNode) -> bool:
        """Whether ``replica`` is a primary now (it took over)."""
        return replica.info("replication").get("role") == "master"

    def wait_ok(self, timeout: float) -> None:
        """Wait until every live node says ``cluster_state:ok``, all see the same primaries,
        and every replica's link to its primary is up.

        Raises:
            AssertionError: Not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = [n.info("cluster-info").get("cluster_state") for n in self.live()]
                views = {_primary_view(n) for n in self.live()}
            except subprocess.CalledProcessError as exc:
                last = str(exc)
            else:
                links = [
                    r.get("master_link_status", "up")
                    for r in (n.info("replication") for n in self.live())
                    if r.get("role") == "slave"
                ]
                last = f"states {states}, {len(views)} distinct views, replica links {links}"
                if all(s == "ok" for s in states) and len(views) == 1 and set(links) <= {"up"}:
                    return
            time.sleep(0.1)
        raise AssertionError(f"cluster not ok within {timeout}s: {last}")

    def stop_all(self) -> None:
        for node in self.nodes:
            processes.stop(node.child, timeout=seconds(10))

    def assert_gone(self) -> None:
        for node in self.nodes:
            assert_stopped(node.child)


def _cli(*args: str) -> str:
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        pytest.skip("redis-cli is not installed (Debian package redis-tools)")
    result = subprocess.run(
        [redis_cli, *args], capture_output=True, text=True, timeout=seconds(30), check=True
    )
    return result.stdout


def _own_slots(node: ClusterNode) -> list[tuple[int, int]]:
    """The slot ranges ``node`` serves, from its own ``CLUSTER NODES`` line (``myself``)."""
    for line in node.cli("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if "myself" in parts[2]:
            ranges = []
            for item in parts[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated or imported
                start, _, end = item.partition("-")
                ranges.append((int(start), int(end or start)))
            return ranges
    return []


def _primary_view(node: ClusterNode) -> str:
    """The primaries with their slots as ``node`` sees them (sorted, for comparing views)."""
    rows = []
    for line in node.cli("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if "master" in parts[2] and "fail" not in parts[2]:
            rows.append(parts[1].split("@")[0] + " " + " ".join(parts[8:]))
    return "\n".join(sorted(rows))


def _free_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port(_HOST)
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((_HOST, port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair")


def _start_node(base: Path) -> ClusterNode:
    port = _free_pair()
    directory = base / f"node-{port}"
    directory.mkdir()
    extra = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(directory / "nodes.conf"),
        "--cluster-node-timeout",
        str(_NODE_TIMEOUT_MS),
        "--appendonly",
        "no",
        # Replicas sync at once (the default waits 5 s for more replicas): a replica
        # that never synced refuses to take over ("disconnected for longer than allowed").
        "--repl-diskless-sync-delay",
        "0",
    )
    argv = redis_argv(port, directory, host=_HOST, extra=extra)
    child = processes.spawn(f"redis-{port}", argv, log_path=directory / "redis.log")
    node = ClusterNode(port, directory, child)
    try:
        processes.wait_for_port(_HOST, port, seconds(10), child)
    except processes.ChildFailed:
        processes.stop(child, timeout=seconds(10))
        raise
    return node


def start_cluster(base: Path) -> RedisCluster:
    """Start six nodes, create the cluster and wait until it is ok.

    Raises:
        ChildFailed: A node did not start (after retries on a taken port).
        AssertionError: The cluster did not become ok in time.
    """
    nodes: list[ClusterNode] = []
    cluster = RedisCluster(nodes)
    try:
        for _ in range(_SIZE):
            for attempt in range(_ATTEMPTS):
                try:
                    nodes.append(_start_node(base))
                    break
                except processes.ChildFailed:
                    if attempt == _ATTEMPTS - 1:
                        raise
        _cli(
            "--cluster",
            "create",
            *(n.address for n in nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        )
        cluster.wait_ok(seconds(30))
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A fresh 3-primary, 3-replica Redis Cluster for this test; stopped by pid at teardown."""
    cluster = start_cluster(tmp_path_factory.mktemp("rcluster"))
    yield cluster
    cluster.stop_all()
    cluster.assert_gone()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for the session's tests that do not break it (own prefix each)."""
    cluster = start_cluster(tmp_path_factory.mktemp("rcluster-shared"))
    yield cluster
    cluster.stop_all()
    cluster.assert_gone()
