"""clusterchat.cluster.redis for real: the argv starts a private redis-server."""

from pathlib import Path

import pytest
import redis

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.redis import redis_argv
from tests.support.processes import assert_stopped
from tests.support.timing import seconds

pytestmark = pytest.mark.integration


def test_redis_argv_starts_loopback_server_without_persistence(tmp_path: Path) -> None:
    """The server binds 127.0.0.1 only, in protected mode, and writes nothing to disk."""
    port = free_port()
    child = processes.spawn("redis", redis_argv(port, tmp_path), log_path=tmp_path / "redis.log")
    try:
        processes.wait_for_port("127.0.0.1", port, seconds(10), child)
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=seconds(5)) as client:
            config = client.config_get("*")
            client.set("k", "v")
        assert config["bind"] == "127.0.0.1"
        assert config["port"] == str(port)
        assert config["dir"] == str(tmp_path)
        assert config["save"] == ""
        assert config["appendonly"] == "no"
        assert config["protected-mode"] == "yes"
        assert config["daemonize"] == "no"
        assert config["loglevel"] == "warning"
    finally:
        processes.stop(child, timeout=seconds(10))
    assert child.returncode == 0  # SIGTERM is a clean shutdown for redis
    assert_stopped(child)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.log"]
