"""The end of a run: ``bench.json`` with every figure, and the summary tables (rich).

``bench.json`` holds the report's dataclasses as JSON objects, plus
``ratios`` (sustained rates over the PUBLISH ceilings of the same run) and
``losses`` (every lost or duplicated message; empty on a correct run).

The tables print figures only. A full run also shows which steps were
sustained (the criterion that defines "max sustainable", in
``clusterchat_bench.stats``) and the ratios to the ceiling; a ``--quick`` run
is a smoke run: it shows neither, and says so first and last.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterchat_bench.header import header_lines
from clusterchat_bench.results import BenchReport, ratios
from clusterchat_bench.scenarios.connect import PhaseFigures
from clusterchat_bench.scenarios.idle import FEW_IDLE_CONNECTIONS, IdleFigures
from clusterchat_bench.scenarios.steps import SteppedFigures, cpu_text

__all__ = ["idle_text", "print_summary", "report_dict", "write_json"]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def report_dict(report: BenchReport) -> dict[str, Any]:
    """Everything in the report as JSON-ready values."""
    data = _plain(dataclasses.asdict(report))
    data["ratios"] = ratios(report)
    data["losses"] = report.losses()
    return dict(data)


def write_json(report: BenchReport, path: Path) -> None:
    """Write ``bench.json``."""
    path.write_text(json.dumps(report_dict(report), indent=2) + "\n")


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _phase(phase: PhaseFigures) -> str:
    failed = f", {phase.failed} failed" if phase.failed else ""
    return f"{phase.succeeded:,} in {phase.seconds:.2f} s = {phase.per_second:,.0f}/s{failed}"


def _steps_table(title: str, unit: str, run: SteppedFigures, quick: bool) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (f"offered {unit}/s", "delivered/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for column in ("lost", "dup", "gen lag ms", "cpu % of a core", "nodes+log µs/msg"):
        table.add_column(column, justify="right")
    if not quick:
        table.add_column("sustained", justify="right")
    for step in run.steps:
        row = [
            _num(step.offered_per_s),
            _num(step.delivered_per_s),
            _num(step.p50_ms, digits=1),
            _num(step.p99_ms, digits=1),
            _num(step.max_ms, digits=1),
            str(step.lost),
            str(step.duplicated),
            _num(step.generator_lag_ms, digits=1),
            cpu_text(step.cpu_percent),
            _num(step.node_us_per_message),
        ]
        if not quick:
            row.append("yes" if step.sustainable else "no: " + "; ".join(step.reasons))
        table.add_row(*row)
    return table


def idle_text(idle: IdleFigures) -> str:
    """The idle figure, always with the connections it comes from.

    ``+21,904 KiB over 200 logged-in connections = 112,148 B each``; below
    ``FEW_IDLE_CONNECTIONS`` the run's note (printed under the table) says
    that so few connections make no per-connection cost.
    """
    if idle.rss_before_kib is None or idle.rss_after_kib is None:
        return f"not measured ({idle.login.succeeded:,} logged-in connections)"
    growth = idle.rss_after_kib - idle.rss_before_kib
    text = f"{growth:+,} KiB over {idle.login.succeeded:,} logged-in connections"
    if idle.bytes_per_connection is not None:
        text += f" = {idle.bytes_per_connection:,.0f} B each"
        if idle.login.succeeded < FEW_IDLE_CONNECTIONS:
            text += " (too few: see below)"
    return text


def _summary(report: BenchReport, quick: bool) -> Table:
    table = Table(title="clusterchat bench", title_justify="left")
    table.add_column("scenario")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if report.ceiling is not None:
        c = report.ceiling
        table.add_row("ceiling", f"PUBLISH/s unpipelined ({c.method})", _num(c.unpipelined_per_s))
        table.add_row("", f"PUBLISH/s pipelined x{c.pipeline}", _num(c.pipelined_per_s))
    if report.connect is not None:
        table.add_row("connect", "register", _phase(report.connect.register))
        table.add_row("", "log in", _phase(report.connect.login))
    shares = ratios(report)
    for name, figures, unit in (
        ("pairs", report.pairs, "msgs"),
        ("groups", report.groups, "member-msgs"),
    ):
        if figures is None:
            continue
        run = figures.run
        if quick:
            offered = ", ".join(f"{s.offered_per_s:,.0f}" for s in run.steps)
            table.add_row(name, f"steps run (offered {unit}/s)", offered)
            continue
        table.add_row(name, f"max sustainable {unit}/s", _num(run.max_sustainable_per_s))
        share = shares[f"{name}_max_vs_unpipelined_ceiling"]
        table.add_row("", "of unpipelined ceiling", _num(share and share * 100, "%", 1))
        at_max = [s for s in run.steps if s.offered_per_s == run.max_sustainable_per_s]
        if at_max:
            table.add_row(
                "",
                "nodes' and log writer's CPU per message there",
                _num(at_max[0].node_us_per_message, " µs"),
            )
        table.add_row("", "stopped", run.stopped_because)
    if report.offline is not None:
        o = report.offline
        table.add_row(
            "offline", f"last of {o.stored} after login", _num(o.seconds_to_last, " s", 3)
        )
        table.add_row(
            "", "lost / duplicated / in order", f"{o.lost} / {o.duplicated} / {o.in_order}"
        )
    if report.idle is not None:
        i = report.idle
        table.add_row("idle", "node RSS growth", idle_text(i))
        table.add_row(
            "",
            "node RSS before / after",
            f"{_num(i.rss_before_kib, ' KiB')} / {_num(i.rss_after_kib, ' KiB')}",
        )
    for name, error in report.errors.items():
        table.add_row(name, "FAILED", error.splitlines()[-1][:80] if error else "")
    return table


def print_summary(report: BenchReport, console: Console) -> None:
    """Print the step tables, the summary, and the header again (machine, cluster, smoke run)."""
    quick = bool(report.options.get("quick"))
    if report.pairs is not None:
        console.print(
            _steps_table("pairs (cross-node one-to-one)", "msgs", report.pairs.run, quick)
        )
    if report.groups is not None:
        console.print(_steps_table("groups (fan-out)", "member-msgs", report.groups.run, quick))
    console.print(_summary(report, quick))
    if report.idle is not None and report.idle.note:
        console.print(f"idle: {report.idle.note}", highlight=False, markup=False)
    for line in header_lines(report.machine, report.cluster, quick):
        console.print(line, highlight=False, markup=False)
    for loss in report.losses():
        console.print(f"LOST OR DUPLICATED: {loss}", style="bold red", markup=False)
