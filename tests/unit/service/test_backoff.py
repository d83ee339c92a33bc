"""Backoff: free attempts, then waits that double up to a cap; streaks end; memory is bounded."""

from clusterchat.service.backoff import Backoff
from tests.support.defaults import SETTINGS

#: A default node's values for what a test does not set.
CAP, FORGET, KEYS = SETTINGS.attempt_wait_cap, SETTINGS.attempt_forget, SETTINGS.attempt_keys


def test_waits_double_after_the_free_attempts_up_to_the_cap() -> None:
    now = [0.0]
    backoff = Backoff(free=3, base=1, cap=8, forget=FORGET, max_keys=KEYS, clock=lambda: now[0])
    waits = []
    for _ in range(8):
        backoff.count("alice")
        waits.append(backoff.retry_after("alice"))
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]
    assert backoff.retry_after("bob") == 0
    now[0] = 5.0
    assert backoff.retry_after("alice") == 3


def test_success_and_silence_end_a_streak() -> None:
    now = [0.0]
    backoff = Backoff(free=1, base=10, cap=100, forget=60, max_keys=KEYS, clock=lambda: now[0])
    backoff.count("a")
    backoff.count("a")
    assert backoff.retry_after("a") == 10
    backoff.clear("a")
    assert backoff.retry_after("a") == 0
    backoff.count("b")
    backoff.count("b")
    now[0] = 61.0  # quiet for longer than ``forget`` and than its wait
    backoff.count("b")
    assert backoff.retry_after("b") == 0  # a new streak: a free attempt again


def test_a_wait_longer_than_forget_is_kept_to_its_end() -> None:
    now = [0.0]
    backoff = Backoff(free=0, base=100, cap=100, forget=10, max_keys=KEYS, clock=lambda: now[0])
    backoff.count("a")
    now[0] = 50.0
    assert backoff.retry_after("a") == 50


def test_memory_is_bounded_by_max_keys() -> None:
    backoff = Backoff(free=0, base=1, cap=CAP, forget=FORGET, max_keys=100, clock=lambda: 0.0)
    for index in range(10_000):
        backoff.count(("address", index))
    assert backoff.retry_after(("address", 9_999)) == 1
    assert backoff.retry_after(("address", 0)) == 0  # the quietest were forgotten
    assert len(backoff._streaks) == 100
