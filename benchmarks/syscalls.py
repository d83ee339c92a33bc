"""System calls and kernel time of a running cluster's processes, per message.

Run beside a load (``clusterchat bench``, or ``bench --target`` against any
cluster), during one of its steps::

    .venv/bin/python benchmarks/syscalls.py --target 127.0.0.1:8000 \\
        --redis-port 6379 --rate 7500 --seconds 10 [--pid loadgen=PID]

It finds the processes behind the target addresses as ``bench --target``
does (``clusterchat_bench.listeners``: the nodes, also behind nginx, and the
log writer of their SQLite file), Redis from its port, and any others named
with ``--pid``. Over ``--seconds`` it reads each one's user and system CPU
time (``/proc/PID/stat``, threads included) and counts its system calls with
``perf stat`` on the ``raw_syscalls`` and ``syscalls`` tracepoints (root, or
``perf_event_paranoid`` at most 1), and prints per process: percent of a
core in user and in kernel mode, and system calls per second and per
message (``--rate``: the step's offered rate, all of it delivered when the
step is sustained), in all and for the calls that matter here (``read``,
``write``, ``pread64``, ``pwrite64``, ``epoll_pwait``, ``fdatasync``).

No test asserts on its figures; benchmarks/RESULTS.md cites them with the
command that made them.
"""

import argparse
import subprocess
import tempfile
from pathlib import Path

from clusterchat_bench.cluster import BenchCluster
from clusterchat_bench.commands import Endpoint
from clusterchat_bench.cpu import cpu_times
from clusterchat_bench.listeners import listening_pids

__all__ = ["main", "parse_perf"]

CALLS = ("read", "write", "pread64", "pwrite64", "epoll_pwait", "epoll_wait", "fdatasync")
_ALL = "raw_syscalls:sys_enter"


def _times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (0, 0: gone)."""
    return cpu_times(pid) or (0.0, 0.0)


def parse_perf(text: str) -> dict[str, int]:
    """``perf stat -x,`` output: the count of each event (``all`` for every call)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        event = parts[2].strip()
        name = "all" if event == _ALL else event.removeprefix("syscalls:sys_enter_")
        counts[name] = counts.get(name, 0) + int(parts[0])
    return counts


def _measure(processes: dict[str, list[int]], seconds: float) -> dict[str, dict[str, float]]:
    events = ",".join([_ALL, *(f"syscalls:sys_enter_{call}" for call in CALLS)])
    before = {name: [_times(pid) for pid in pids] for name, pids in processes.items()}
    with tempfile.TemporaryDirectory(prefix="syscalls-") as tmp:
        runs = {}
        for name, pids in processes.items():
            out = Path(tmp) / f"{name}.csv"
            argv = ["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids))]
            argv += ["-o", str(out), "--", "sleep", str(seconds)]
            runs[name] = (subprocess.Popen(argv), out)
        for process, _ in runs.values():
            process.wait(timeout=seconds + 30)
        counts = {name: parse_perf(out.read_text()) for name, (_, out) in runs.items()}
    figures: dict[str, dict[str, float]] = {}
    for name, pids in processes.items():
        after = [_times(pid) for pid in pids]
        user = sum(a[0] - b[0] for a, b in zip(after, before[name], strict=True))
        system = sum(a[1] - b[1] for a, b in zip(after, before[name], strict=True))
        figures[name] = {
            "user_percent": 100 * user / seconds,
            "system_percent": 100 * system / seconds,
            **{call: count / seconds for call, count in counts[name].items()},
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port[,host:port...] of the cluster")
    parser.add_argument("--redis-port", type=int, help="the port of the Redis to measure too")
    parser.add_argument("--pid", action="append", default=[], help="NAME=PID of another process")
    parser.add_argument("--rate", type=float, required=True, help="messages per second offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure")
    args = parser.parse_args()
    endpoints = []
    for item in args.target.split(","):
        host, _, port = item.rpartition(":")
        endpoints.append(Endpoint(host, int(port)))
    processes = BenchCluster.target(endpoints, None).processes()
    if args.redis_port:
        processes["redis"] = listening_pids(args.redis_port)
    for item in args.pid:
        name, _, pid = item.partition("=")
        processes[name] = [int(pid)]
    processes = {name: pids for name, pids in processes.items() if pids}
    if not processes:
        parser.error("no process found behind those addresses")
    figures = _measure(processes, args.seconds)
    calls = ["all", *CALLS]
    print(f"{'':10} {'user%':>6} {'sys%':>6}  " + " ".join(f"{c:>11}" for c in calls))
    for name, row in figures.items():
        print(
            f"{name + ' /s':10} {row['user_percent']:6.1f} {row['system_percent']:6.1f}  "
            + " ".join(f"{row.get(c, 0):11.0f}" for c in calls)
        )
        print(
            f"{name + ' /msg':24} " + " ".join(f"{row.get(c, 0) / args.rate:11.2f}" for c in calls)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
