"""``clusterchat_bench.cpu.CpuMeter``: a process listed twice under one name counts once.

A node started with ``--workers`` may be found as its supervisor and as its
workers, which are also the supervisor's family; each must count once. This
process is the one measured (nothing is started).
"""

import os
import time

from clusterchat_bench.cpu import CpuMeter


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_process_listed_twice_counts_once() -> None:
    me = os.getpid()
    once = CpuMeter({"me": [me]})
    twice = CpuMeter({"me": [me, me]})
    _burn(0.3)
    used_twice = twice.stop().used["me"]
    used_once = once.stop().used["me"]
    assert used_once >= 0.2
    # Read one after the other: at most a few clock ticks apart.
    assert abs(used_twice - used_once) <= 0.05, (used_once, used_twice)
