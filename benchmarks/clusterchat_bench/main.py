"""``clusterchat bench``: command line in, files and tables out; the exit status.

``main`` is the entry point of ``clusterchat bench`` (which finds this package
when it is installed), of ``clusterchat-bench`` and of ``python -m
clusterchat_bench``: it parses the command line and calls ``run``.

Writes ``OUT/bench.json`` (every figure, the command line, versions, machine),
``OUT/bench.png`` (delivered rate and p99 against offered rate) and
``OUT/logs/`` (the logs of the processes it started), and prints the tables.
Exit status: 0, or 1 when a scenario failed to run, 2 for bad options, 130
when interrupted. Lost or duplicated messages are reported loudly (and in
``bench.json``'s ``losses``) but are a finding, not a failure to run.
"""

import argparse
import importlib.util
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from clusterchat_bench.options import BenchOptions

__all__ = ["build_parser", "main", "run"]

#: How to install what this package needs, for the messages that say so.
INSTALL_HINT = "pip install -e benchmarks (from a clusterchat checkout)"


def build_parser(prog: str = "clusterchat bench") -> argparse.ArgumentParser:
    """The bench's command line (every flag defaults to None: "not given").

    Args:
        prog: The command name shown in help and errors.

    Returns:
        The parser.
    """
    bench = argparse.ArgumentParser(
        prog=prog,
        description="measure a real cluster: throughput, latency, capacity",
    )
    bench.add_argument("--scenario", help="comma list: ceiling,connect,pairs,groups,offline,idle")
    bench.add_argument("--nodes", type=int, help="nodes of the cluster it starts (default 2)")
    bench.add_argument("--users", type=int, help="users of connect and pairs (default 2000)")
    bench.add_argument("--step-seconds", type=float, help="seconds per offered rate (default 5)")
    bench.add_argument("--drain-seconds", type=float, help="most wait after a step (default 5)")
    bench.add_argument("--rates", help="offered msgs/s of pairs (default 1000,2000,5000,...)")
    bench.add_argument("--groups", type=int, help="groups (default 20)")
    bench.add_argument("--group-size", type=int, help="members per group (default 100)")
    bench.add_argument("--group-rates", help="offered member-msgs/s of groups (10000,...)")
    bench.add_argument("--offline", type=int, help="stored messages to fetch (default 1000)")
    bench.add_argument("--idle", type=int, help="idle connections on one node (default 10000)")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: every scenario small (< 1 min), figures only, nothing judged",
    )
    bench.add_argument(
        "--cheap-hashing",
        action="store_true",
        help="the nodes it starts hash passwords with cheap argon2 parameters"
        " (default: a node's own defaults); reported in the header and bench.json",
    )
    bench.add_argument(
        "--node-workers",
        type=int,
        help="each node it starts runs `clusterchat node --workers N`: a supervisor and N"
        " node processes sharing the node's port (default 1: one process)",
    )
    bench.add_argument(
        "--db",
        help="the database of the cluster it starts: a URL (sqlite:///..., postgresql://...,"
        " mysql://...; upgraded first, as `up` does), or `postgresql` to start a private"
        " PostgreSQL server for the run (default: a SQLite file of its own)",
    )
    bench.add_argument("--via-nginx", action="store_true", help="connect through nginx")
    bench.add_argument("--target", help="HOST:PORT,... of a running cluster's nodes")
    bench.add_argument("--redis", help="the running cluster's Redis URL (with --target)")
    bench.add_argument("--out", type=Path, help="output directory (default bench-out)")
    bench.add_argument("--workers", type=int, help="load-generator processes")
    return bench


def main(argv: Sequence[str] | None = None, prog: str = "clusterchat bench") -> int:
    """Parse the bench's command line and run it.

    Args:
        argv: The arguments after the command name (None: ``sys.argv[1:]``).
        prog: The command name, for help texts and the recorded command line.

    Returns:
        The exit status (see ``run``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    flags = vars(build_parser(prog).parse_args(args))
    return run(flags, [*prog.split(), *args])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(flags: Mapping[str, Any], argv: Sequence[str] = ()) -> int:
    """Run the bench from parsed command-line flags (None: not given).

    Args:
        flags: The ``bench`` sub-command's flags (see ``BenchOptions.from_flags``).
        argv: The command line, recorded in ``bench.json``.

    Returns:
        The exit status.
    """
    try:
        options = BenchOptions.from_flags(flags, argv)
    except ValueError as exc:
        print(f"clusterchat bench: {exc}", file=sys.stderr)
        return 2
    missing = [name for name in ("rich", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"clusterchat bench needs {' and '.join(missing)}: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    from clusterchat.cluster.errors import ChildFailed, MissingDependency
    from clusterchat_bench.display import RichDisplay
    from clusterchat_bench.plot import write_plot
    from clusterchat_bench.report import print_summary, write_json
    from clusterchat_bench.runner import run_bench

    previous = signal.signal(signal.SIGTERM, _interrupt)
    display = RichDisplay()
    try:
        with display:
            report = run_bench(options, display)
    except KeyboardInterrupt:
        print("clusterchat bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (ChildFailed, MissingDependency) as exc:
        print(f"clusterchat bench: could not start the cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / "bench.json"
    write_json(report, json_path)
    plotted = write_plot(report, options.out / "bench.png")
    print_summary(report, display.console)
    display.console.print(
        f"wrote {json_path}" + (f" and {options.out / 'bench.png'}" if plotted else "")
    )
    return 1 if report.errors else 0
