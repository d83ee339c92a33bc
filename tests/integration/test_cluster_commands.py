"""``clusterchat up`` and the benchmark start Redis and nodes with the same command lines.

Both clusters are started for real (Redis, one node each; ``up`` adds nginx),
both through ``cluster.children``, and the command lines their children
actually run are compared: each is what ``redis_argv`` / ``node_argv`` build,
so they differ only in ports, directories and names, and in the one flag
``up`` adds for nginx in front (``--proxy-protocol``).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from clusterchat.cluster.children import start_node
from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.launcher import Cluster, ClusterSpec
from clusterchat.cluster.node_command import node_argv
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.redis import PUBSUB_OUTPUT_BUFFER, redis_argv
from clusterchat_bench.cluster import BenchCluster
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

#: The options whose values name a place (port, directory, database, Redis, node name).
_PLACES = ("--port", "--dir", "--db", "--redis", "--node-id")


def _without_places(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value after each of ``_PLACES`` replaced by a placeholder."""
    result = list(argv)
    for index, word in enumerate(result[:-1]):
        if word in _PLACES:
            result[index + 1] = "<place>"
    return result


def _port(argv: Sequence[str]) -> int:
    return int(argv[list(argv).index("--port") + 1])


@pytest.fixture
def up_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A ``clusterchat up`` cluster of one node (Redis, node, nginx), stopped by pid after."""
    cluster = Cluster(ClusterSpec(nodes=1, port=free_port(), dir=tmp_path / "up"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    for slot in cluster.slots():
        assert slot.child is not None
        assert_stopped(slot.child)


@pytest.fixture
def bench_cluster(tmp_path: Path) -> Iterator[BenchCluster]:
    """The bench's own cluster of one node (Redis, node), stopped by pid after."""
    workdir = tmp_path / "bench"
    workdir.mkdir()
    cluster = BenchCluster.start(workdir, nodes=1, via_nginx=False)
    try:
        yield cluster
    finally:
        cluster.stop()
    for child in (cluster.redis, *cluster.nodes):
        assert child is not None
        assert_stopped(child)


def test_bench_and_up_run_redis_with_one_command_line(
    up_cluster: Cluster, bench_cluster: BenchCluster
) -> None:
    """Both Redis servers run redis_argv's command line, up's pubsub buffer setting included."""
    assert up_cluster.redis is not None
    assert up_cluster.redis.child is not None
    assert bench_cluster.redis is not None
    up_argv = up_cluster.redis.child.argv
    bench_argv = bench_cluster.redis.argv
    up_dir = (up_cluster.spec.dir / "redis").resolve()
    assert up_argv == redis_argv(up_cluster.redis.port, up_dir, host=up_cluster.spec.host)
    assert bench_cluster.workdir is not None
    bench_dir = bench_cluster.workdir / "redis"
    assert bench_argv == redis_argv(_port(bench_argv), bench_dir, host="127.0.0.1")
    assert _without_places(bench_argv) == _without_places(up_argv)
    assert bench_cluster.redis_url is not None
    with redis.Redis.from_url(bench_cluster.redis_url, socket_timeout=seconds(5)) as client:
        limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert "pubsub 268435456 134217728 60" in limits
    assert PUBSUB_OUTPUT_BUFFER[1] == "pubsub 256mb 128mb 60"


def test_bench_and_up_run_nodes_with_one_command_line(
    up_cluster: Cluster, bench_cluster: BenchCluster
) -> None:
    """Both nodes run node_argv's command line; up adds only --proxy-protocol (nginx)."""
    assert up_cluster.nodes[0].child is not None
    up_argv = up_cluster.nodes[0].child.argv
    assert up_argv == node_argv(
        up_cluster.nodes[0].port,
        db_url=up_cluster.db_url,
        redis_url=up_cluster.redis_url,
        node_id="node1",
        host=up_cluster.spec.host,
        extra=["--proxy-protocol"],
    )
    bench_argv = bench_cluster.nodes[0].argv
    assert bench_argv == node_argv(
        bench_cluster.endpoints[0].port,
        db_url=bench_cluster.db_url,
        redis_url=bench_cluster.redis_url,
        node_id="n1",
        host="127.0.0.1",
    )
    assert [*_without_places(bench_argv), "--proxy-protocol"] == _without_places(up_argv)


def _processes_with(words: Sequence[str]) -> list[int]:
    """Pids whose command line contains ``words`` in a row (from /proc)."""
    wanted = "\0".join(words).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline:
            found.append(int(entry.name))
    return found


def test_a_node_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    """start_node raises ChildFailed when the node is late, and leaves no process behind."""
    port = free_port()
    with pytest.raises(ChildFailed):
        start_node(
            "late",
            port,
            db_url=f"sqlite:///{tmp_path / 'chat.db'}",
            redis_url=None,
            log_path=tmp_path / "late.log",
            timeout=0.001,
        )
    assert _processes_with(["--port", str(port)]) == []
