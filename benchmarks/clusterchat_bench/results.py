"""BenchReport: every figure of one run, and its rates as ratios of the Redis ceiling.

The bench judges nothing: it reports figures, the machine they come from,
and the sustained rates as fractions of the PUBLISH ceiling measured in the
same run (``ratios``), which keeps runs on different machines comparable.
"""

from dataclasses import dataclass, field
from typing import Any

from clusterchat_bench.scenarios.ceiling import CeilingFigures
from clusterchat_bench.scenarios.connect import ConnectFigures
from clusterchat_bench.scenarios.groups import GroupsFigures
from clusterchat_bench.scenarios.idle import IdleFigures
from clusterchat_bench.scenarios.offline import OfflineFigures
from clusterchat_bench.scenarios.pairs import PairsFigures

__all__ = ["BenchReport", "ratios"]


@dataclass
class BenchReport:
    """One run: what was asked, where it ran, and each scenario's figures (None: not run)."""

    started: str
    argv: tuple[str, ...]
    options: dict[str, Any]
    machine: dict[str, Any]
    versions: dict[str, str | None]
    cluster: dict[str, Any]
    seconds: float = 0.0
    ceiling: CeilingFigures | None = None
    connect: ConnectFigures | None = None
    pairs: PairsFigures | None = None
    groups: GroupsFigures | None = None
    offline: OfflineFigures | None = None
    idle: IdleFigures | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def losses(self) -> list[str]:
        """Every lost or duplicated message, by scenario and step (empty: none)."""
        found = []
        for name, run in (("pairs", self.pairs), ("groups", self.groups)):
            if run is None:
                continue
            for step in (run.run.warmup, *run.run.steps):
                if step.lost or step.duplicated:
                    found.append(
                        f"{name} step {step.step} ({step.offered_per_s:,.0f}/s): "
                        f"{step.lost} lost, {step.duplicated} duplicated"
                    )
        if self.offline is not None and (self.offline.lost or self.offline.duplicated):
            found.append(f"offline: {self.offline.lost} lost, {self.offline.duplicated} duplicated")
        return found


def ratios(report: BenchReport) -> dict[str, float | None]:
    """Sustained rates as fractions of the unpipelined and pipelined PUBLISH ceilings."""
    result: dict[str, float | None] = {}
    ceiling = report.ceiling
    for name, run in (("pairs", report.pairs), ("groups", report.groups)):
        best = run.run.max_sustainable_per_s if run is not None else None
        for kind in ("unpipelined", "pipelined"):
            base = None
            if ceiling is not None:
                base = (
                    ceiling.unpipelined_per_s if kind == "unpipelined" else ceiling.pipelined_per_s
                )
            key = f"{name}_max_vs_{kind}_ceiling"
            result[key] = best / base if best is not None and base else None
    return result
