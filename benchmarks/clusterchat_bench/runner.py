"""The run: start (or target) the cluster, start the load generators, run each scenario, stop all.

Scenarios run in ``SCENARIOS`` order; ``pairs`` needs the users of
``connect``, so choosing ``pairs`` runs ``connect`` too. A scenario that
fails is recorded in ``BenchReport.errors`` with its reason, the load
generators are replaced (a failed command may leave answers in their pipes),
and the run goes on. Whatever happens, including Ctrl-C (KeyboardInterrupt)
and SIGTERM (turned into one by ``clusterchat_bench.main``), the workers and
every child are stopped by pid, the node logs are copied to ``OUT/logs`` and
the temporary directory is removed.
"""

import contextlib
import dataclasses
import secrets
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clusterchat.settings import redact_url
from clusterchat_bench.cluster import BenchCluster, node_configuration, node_environment
from clusterchat_bench.commands import Endpoint
from clusterchat_bench.header import SMOKE_RUN, header_lines
from clusterchat_bench.limits import raise_open_files
from clusterchat_bench.machine import machine_info, versions
from clusterchat_bench.options import BenchOptions
from clusterchat_bench.results import BenchReport
from clusterchat_bench.scenarios.ceiling import run_ceiling
from clusterchat_bench.scenarios.connect import run_connect
from clusterchat_bench.scenarios.context import Display, ScenarioContext
from clusterchat_bench.scenarios.groups import run_groups
from clusterchat_bench.scenarios.idle import run_idle
from clusterchat_bench.scenarios.offline import run_offline
from clusterchat_bench.scenarios.pairs import close_pairs, run_pairs
from clusterchat_bench.workers import WorkerPool

__all__ = ["run_bench"]

_RUNNERS: dict[str, Callable[[ScenarioContext], Any]] = {
    "ceiling": run_ceiling,
    "connect": run_connect,
    "pairs": run_pairs,
    "groups": run_groups,
    "offline": run_offline,
    "idle": run_idle,
}


def _plan(options: BenchOptions) -> list[str]:
    chosen = set(options.scenarios)
    if "pairs" in chosen:
        chosen.add("connect")
    return [name for name in _RUNNERS if name in chosen]


def _new_report(options: BenchOptions) -> BenchReport:
    options_dict = {k: v for k, v in dataclasses.asdict(options).items() if k != "argv"}
    if options.db is not None:
        options_dict["db"] = redact_url(options.db)
    return BenchReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        argv=tuple(redact_url(word) if "://" in word else word for word in options.argv),
        options=options_dict,
        machine=machine_info(),
        versions=versions(),
        cluster={},
    )


def _describe(cluster: BenchCluster, options: BenchOptions, open_files: int) -> dict[str, Any]:
    own = cluster.own
    return {
        "mode": "own" if own else "target",
        "nodes": len(cluster.endpoints),
        "endpoints": [str(e) for e in cluster.endpoints],
        "pids": cluster.processes(),
        "via_nginx": cluster.front is not None,
        "redis_url": cluster.redis_url,
        "node_configuration": node_configuration(cluster.cheap_hashing) if own else None,
        "node_env": node_environment(cluster.cheap_hashing) if own else None,
        "command_lines": cluster.command_lines() if own else None,
        "node_workers": cluster.node_workers if own else None,
        "database": cluster.database() if own else None,
        "workers": options.workers,
        "open_file_limit": open_files,
    }


def run_bench(options: BenchOptions, display: Display) -> BenchReport:
    """Run every chosen scenario and return the figures.

    Raises:
        ChildFailed: The cluster could not be started.
        MissingDependency: redis-server (or nginx with ``--via-nginx``) is missing.
        KeyboardInterrupt: Ctrl-C or SIGTERM; everything was stopped first.
    """
    started = time.monotonic()
    open_files = raise_open_files()
    report = _new_report(options)
    workdir = Path(tempfile.mkdtemp(prefix="clusterchat-bench-")) if options.own_cluster else None
    cluster: BenchCluster | None = None
    workers: WorkerPool | None = None
    try:
        if options.quick:
            display.note(SMOKE_RUN)
        if workdir is not None:
            display.note(f"starting redis-server and {options.nodes} node(s) in {workdir}")
            cluster = BenchCluster.start(
                workdir,
                options.nodes,
                options.via_nginx,
                options.cheap_hashing,
                node_workers=options.node_workers,
                db=options.db,
            )
        else:
            endpoints = [Endpoint(host, port) for host, port in options.targets]
            cluster = BenchCluster.target(endpoints, options.redis)
        report.cluster = _describe(cluster, options, open_files)
        for line in header_lines(report.machine, report.cluster, quick=False):
            display.note(line)
        if cluster.own:
            where = zip(cluster.nodes, cluster.endpoints, strict=True)
            nodes = ", ".join(f"{c.name} pid {c.pid} on {e}" for c, e in where)
            display.note(f"cluster: {nodes}; redis {cluster.redis_url}")
        workers = WorkerPool(options.workers)
        ctx = ScenarioContext(options, cluster, workers, display, f"b{secrets.token_hex(3)}")
        plan = _plan(options)
        for name in plan:
            if name == "pairs" and report.connect is None:
                report.errors["pairs"] = "skipped: connect failed"
                continue
            display.note(f"[{name}]")
            try:
                setattr(report, name, _RUNNERS[name](ctx))
            except Exception as exc:
                report.errors[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                display.note(f"{name} failed: {type(exc).__name__}: {exc}")
                ctx.workers.close()
                ctx.workers = workers = WorkerPool(options.workers)
            if name == "pairs" or (name == "connect" and "pairs" not in plan):
                try:
                    close_pairs(ctx)
                except Exception as exc:
                    display.note(f"closing the pairs connections failed: {exc}")
    finally:
        with _uninterruptible():
            if workers is not None:
                workers.close()
            if cluster is not None:
                cluster.stop()
                cluster.keep_logs(options.out / "logs")
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore a second Ctrl-C or SIGTERM while stopping everything (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
