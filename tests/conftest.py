"""Shared test configuration: fixture plugins, blocking-call detection."""

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

pytest_plugins: list[str] = [
    "tests.support.nginx",
    "tests.support.node",
    "tests.support.proxy",
    "tests.support.redis",
    "tests.support.service",
    "tests.support.wire",
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster | None]:
    """Fail any test whose event loop makes a blocking call (aiohttp's habit)."""
    with blockbuster_ctx("clusterchat") as bb:
        yield bb
