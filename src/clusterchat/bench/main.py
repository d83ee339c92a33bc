"""``clusterchat bench``: options in, files and tables out; the exit status.

Writes ``OUT/bench.json`` (every figure, the command line, versions, machine),
``OUT/bench.png`` (delivered rate and p99 against offered rate) and
``OUT/logs/`` (the logs of the processes it started), and prints the tables.
Exit status: 0, or 1 when a scenario failed to run, 2 for bad options, 130
when interrupted. Lost or duplicated messages are reported loudly (and in
``bench.json``'s ``losses``) but are a finding, not a failure to run.
"""

import importlib.util
import signal
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from clusterchat.bench.options import BenchOptions

__all__ = ["run"]


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
            f"clusterchat bench needs {' and '.join(missing)}: pip install 'clusterchat[bench]'",
            file=sys.stderr,
        )
        return 1
    from clusterchat.bench.display import RichDisplay
    from clusterchat.bench.plot import write_plot
    from clusterchat.bench.report import print_summary, write_json
    from clusterchat.bench.runner import run_bench
    from clusterchat.cluster.errors import ChildFailed, MissingDependency

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
