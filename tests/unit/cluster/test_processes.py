"""clusterchat.cluster.processes without starting any (spawning: tests/integration)."""

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.errors import MissingDependency


def test_find_executable_looks_in_sbin_outside_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx lives in /usr/sbin on Debian and is found even when PATH lacks sbin."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert processes.find_executable("nginx", "nginx-light") == "/usr/sbin/nginx"


def test_find_executable_names_the_debian_package() -> None:
    """A missing program raises MissingDependency saying what to install."""
    with pytest.raises(
        MissingDependency,
        match=r"^no-such-server-xyz not found: apt-get install xyz-server$",
    ):
        processes.find_executable("no-such-server-xyz", "xyz-server")
