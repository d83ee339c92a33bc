"""One time unit for every wait in the tests, scaled for slow machines.

Set ``CLUSTERCHAT_TEST_TIMEOUT_FACTOR`` (default 1) to stretch every timeout
at once, as websockets does with ``WEBSOCKETS_TESTS_TIMEOUT_FACTOR``.
"""

import os

__all__ = ["FACTOR", "seconds"]

FACTOR = float(os.environ.get("CLUSTERCHAT_TEST_TIMEOUT_FACTOR", "1"))


def seconds(value: float) -> float:
    """``value`` seconds, scaled by the timeout factor."""
    return value * FACTOR
