"""clusterchat.cluster.redis: the redis-server argv (started for real: tests/integration)."""

from pathlib import Path

import pytest

from clusterchat.cluster.redis import redis_argv


def test_redis_argv_with_persistence_keeps_snapshots_and_appends_extra(tmp_path: Path) -> None:
    """persistence=True leaves Redis' save policy alone; extra options come last."""
    argv = redis_argv(6399, tmp_path, persistence=True, extra=["--maxclients", "64"])
    assert "--save" not in argv
    assert "--appendonly" not in argv
    assert argv[-2:] == ["--maxclients", "64"]
    assert argv[0].endswith("/redis-server")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_redis_argv_refuses_non_loopback_addresses(tmp_path: Path, host: str) -> None:
    """Only loopback addresses may be bound: tests and clusters stay on 127.0.0.0/8."""
    with pytest.raises(ValueError, match="loopback"):
        redis_argv(6399, tmp_path, host=host)


@pytest.mark.parametrize("host", ["10.73.0.1", "172.16.5.4", "192.168.1.2", "fd00::1"])
def test_redis_argv_binds_a_private_address_only_with_a_password(tmp_path: Path, host: str) -> None:
    """A private address (a network namespace's) needs a password; protected mode stays on."""
    with pytest.raises(ValueError, match="without a password"):
        redis_argv(6399, tmp_path, host=host)
    argv = redis_argv(6399, tmp_path, host=host, password="pw")
    assert argv[argv.index("--bind") + 1] == host
    assert argv[argv.index("--requirepass") + 1] == "pw"
    assert argv[argv.index("--protected-mode") + 1] == "yes"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "8.8.8.8", "::"])
def test_redis_argv_refuses_public_addresses_even_with_a_password(
    tmp_path: Path, host: str
) -> None:
    """A password does not open unspecified or public addresses."""
    with pytest.raises(ValueError, match="loopback or private"):
        redis_argv(6399, tmp_path, host=host, password="pw")
