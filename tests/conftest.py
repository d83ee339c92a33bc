"""Shared test configuration: fixture plugins, blocking-call detection, test sorting.

Tests are sorted by what they start (tests/README.md): a test that starts a
process (redis-server, nginx, a node, any ``subprocess``) carries the
``integration`` marker and lives outside ``tests/unit``. Two hooks keep it so:

* at collection, a test under ``tests/unit`` that carries ``integration`` or
  ``e2e`` stops the run (it belongs in tests/integration, tests/contract...);
* while a test without ``integration`` is set up, run and torn down, every way
  the standard library has to start a process (``subprocess``, ``asyncio``
  and ``multiprocessing`` go through these, pexpect through ``os.forkpty``)
  raises ``ProcessStartedError``, naming the test.

So ``pytest -m "not integration"`` runs only tests that start nothing.
"""

import _posixsubprocess
import contextlib
import os
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import HealthCheck, Phase, settings

pytest_plugins: list[str] = [
    "tests.support.mariadb",
    "tests.support.nginx",
    "tests.support.node",
    "tests.support.postgres",
    "tests.support.proxy",
    "tests.support.redis",
    "tests.support.redis_cluster",
    "tests.support.service",
    "tests.support.wire",
]

# Hypothesis profiles of the fuzz test (tests/integration/test_fuzz.py), which
# drives live nodes. The suite runs "fuzz": bounded, the whole test well under a
# minute on two cores, and without shrinking (each replay of a failure may wait
# seconds for an answer that never comes: it reports the sequence as it failed).
# "fuzz-long" is for on-demand runs, shrinks, and lifts the pytest timeout:
#   pytest -s tests/integration/test_fuzz.py --hypothesis-profile=fuzz-long
# Only a profile whose name starts with "fuzz" changes that test; the property
# tests of tests/unit/protocol bring their own settings.
settings.register_profile(
    "fuzz",
    deadline=None,
    max_examples=100,
    stateful_step_count=40,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
settings.register_profile(
    "fuzz-long",
    deadline=None,
    max_examples=1000,
    stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster | None]:
    """Fail any test whose event loop makes a blocking call (aiohttp's habit)."""
    with blockbuster_ctx("clusterchat") as bb:
        # asyncpg reads ~/.pgpass and looks for client certificates while it
        # parses the connection parameters of a new connection: a stat or two
        # of local files, once per pooled connection (SqlStore keeps them open).
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield bb


#: Markers of tests that may start processes, and the folder where none may.
_STARTS_PROCESSES = ("integration", "e2e")
_UNIT = Path(__file__).parent / "unit"
#: Every way the standard library starts a process: (owner, attribute).
_SPAWNERS: tuple[tuple[Any, str], ...] = (
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
)


class ProcessStartedError(AssertionError):
    """A test without the ``integration`` marker started a process."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Stop the run if a test under tests/unit is marked as starting processes."""
    misplaced = [
        item.nodeid
        for item in items
        if item.path.is_relative_to(_UNIT)
        and any(item.get_closest_marker(name) for name in _STARTS_PROCESSES)
    ]
    if misplaced:
        raise pytest.UsageError(
            "tests under tests/unit start nothing; move these out of tests/unit"
            " (tests/README.md): " + ", ".join(misplaced)
        )


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[None]:
    """Make every process start raise while ``item`` runs, unless it may start them."""
    if item.get_closest_marker("integration"):
        yield
        return

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise ProcessStartedError(
            f"{item.nodeid} starts a process: mark it integration"
            " (and keep it out of tests/unit; tests/README.md)"
        )

    saved = [(owner, name, getattr(owner, name)) for owner, name in _SPAWNERS]
    for owner, name, _ in saved:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """Fixtures of a test without ``integration`` start no process."""
    with _no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A test without ``integration`` starts no process."""
    with _no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    """Nor does its teardown."""
    with _no_processes(item):
        return (yield)
