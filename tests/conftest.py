"""Shared test configuration: fixture plugins, blocking-call detection."""

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import HealthCheck, Phase, settings

pytest_plugins: list[str] = [
    "tests.support.nginx",
    "tests.support.node",
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
        yield bb
