"""CpuMeter: how busy each process of the run was during a step, from ``/proc/PID/stat``.

A step's figures mean little without knowing what was saturated: a node, Redis,
or the load generator itself. The meter reads each process's user + system
CPU time (``utime`` + ``stime``, in clock ticks) before and after, and gives
the share of one core each used over the wall time between (100 = one full
core). Processes of the same name (the load generators) are summed, and a
process's children count with it (nginx's workers with their master).

The entry ``machine`` is the whole machine's busy time from ``/proc/stat``
(everything but idle and iowait: also the kernel's network work, any other
program, and time the hypervisor took), in the same unit: 100 x cores means
every core was busy. ``others`` is the machine's figure minus the measured
processes: what the rest of the machine took (other programs, the kernel's
own threads). A large ``others`` means the run competed with something else.
"""

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "CpuUse", "cpu_seconds", "cpu_times", "family", "machine_busy_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of process ``pid`` so far (None: gone or not Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: count fields after its ")".
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None: gone or not Linux)."""
    times = cpu_times(pid)
    return None if times is None else sum(times)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (None: not Linux)."""
    try:
        with open("/proc/stat") as stat:
            first = stat.readline().split()
    except OSError:
        return None
    ticks = [int(value) for value in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / _TICKS


def family(pid: int) -> list[int]:
    """``pid`` and its direct children (Linux ``/proc/PID/task/PID/children``)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]


class CpuMeter:
    """Snapshots of CPU time per named group of processes."""

    def __init__(self, processes: Mapping[str, Sequence[int]]) -> None:
        # Each process once per name: a node's workers may be listed beside
        # their supervisor, whose family they are too.
        self._processes = {
            name: list(dict.fromkeys(member for pid in pids for member in family(pid)))
            for name, pids in processes.items()
            if pids
        }
        self._start = time.monotonic()
        self._before = self._read()

    def _read(self) -> dict[str, float]:
        totals = {}
        for name, pids in self._processes.items():
            times = [cpu_seconds(pid) for pid in pids]
            totals[name] = sum(t for t in times if t is not None)
        busy = machine_busy_seconds()
        if busy is not None:
            totals["machine"] = busy
        return totals

    def stop(self) -> "CpuUse":
        """What each group used since the meter was made (``/proc`` read once)."""
        wall = max(time.monotonic() - self._start, 1e-6)
        after = self._read()
        used = {name: after[name] - self._before[name] for name in after if name in self._before}
        return CpuUse(used, wall)


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds per group over ``wall`` seconds (``CpuMeter.stop``)."""

    used: dict[str, float]
    wall: float

    def seconds(self, names: Sequence[str]) -> float:
        """CPU seconds of the named groups together."""
        return sum(self.used.get(name, 0.0) for name in names)

    def percent(self) -> dict[str, float]:
        """Percent of one core used by each group, and ``others`` (module docstring)."""
        result = {name: round(100 * value / self.wall, 1) for name, value in self.used.items()}
        if "machine" in result:
            ours = sum(value for name, value in result.items() if name != "machine")
            result["others"] = round(max(0.0, result["machine"] - ours), 1)
        return result
