"""ThrottledLog: a kind's first line, then one line per interval counting those left out."""

import logging

import pytest

from clusterchat.service.throttled_log import ThrottledLog, exception_kind
from tests.support.defaults import SETTINGS

LOGGER = logging.getLogger("test.throttled")


def _raise(value: int) -> None:
    raise ValueError(value)


def _caught(value: int) -> ValueError:
    try:
        _raise(value)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def test_one_traceback_per_kind_then_a_count_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttled = ThrottledLog(
        LOGGER, interval=60, max_kinds=SETTINGS.log_throttle_kinds, clock=lambda: now[0]
    )

    def bug(where: str, value: int) -> None:
        exc = _caught(value)
        throttled.log(exception_kind(where, exc), logging.ERROR, "bug %s", where, exc_info=exc)

    with caplog.at_level(logging.ERROR, logger=LOGGER.name):
        for value in range(1000):
            bug("handling Login", value)  # one kind: same place, type and line
        assert len(caplog.records) == 1
        assert caplog.records[0].exc_info is not None
        now[0] = 61.0
        bug("handling Login", 1)
        assert len(caplog.records) == 2
        assert "999 more like it in the last 61 s" in caplog.records[1].getMessage()
        assert caplog.records[1].exc_info is None
        bug("handling Register", 3)  # another place: another kind, its own traceback
        assert len(caplog.records) == 3
        assert caplog.records[2].exc_info is not None


def test_kinds_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(
        LOGGER, interval=SETTINGS.log_throttle_interval, max_kinds=3, clock=lambda: 0.0
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        for index in range(100):
            throttled.log(("refused", index), logging.WARNING, "refused %d", index)
    # Three kinds, then one shared entry for all the others.
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 1",
        "refused 2",
        "refused 3",
    ]
