"""BenchReport: every figure of one run, and the issue's targets judged against them.

The targets (issue 5) are read as ratios of the same run's Redis ceiling
where they are relative; they are reported, never asserted:

- ``pairs``: maximum sustainable cross-node rate >= 25% of the unpipelined
  PUBLISH ceiling, with p99 < 25 ms at half that rate (the highest step at or
  below half) and nothing lost;
- ``groups``: >= 100,000 member-messages/s sustained, p99 fan-out < 50 ms there;
- ``idle``: <= 10 KiB of node RSS per idle logged-in connection;
- ``offline``: 1000 stored messages arrive within 1 s of the login, none lost.
"""

from dataclasses import dataclass, field
from typing import Any

from clusterchat_bench.scenarios.ceiling import CeilingFigures
from clusterchat_bench.scenarios.connect import ConnectFigures
from clusterchat_bench.scenarios.groups import GroupsFigures
from clusterchat_bench.scenarios.idle import IdleFigures
from clusterchat_bench.scenarios.offline import OfflineFigures
from clusterchat_bench.scenarios.pairs import PairsFigures
from clusterchat_bench.scenarios.steps import SteppedFigures
from clusterchat_bench.stats import StepFigures

__all__ = ["BenchReport", "TargetCheck", "ratios", "target_checks"]

PAIRS_SHARE_OF_CEILING = 0.25
PAIRS_P99_AT_HALF_MS = 25.0
GROUPS_RATE = 100_000.0
GROUPS_P99_MS = 50.0
IDLE_BYTES = 10 * 1024
OFFLINE_SECONDS = 1.0


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


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue: the figure, the bound, and whether it was met (None: not run)."""

    name: str
    figure: str
    target: str
    met: bool | None


def _step_at_or_below(run: SteppedFigures, rate: float) -> StepFigures | None:
    below = [s for s in run.steps if s.offered_per_s <= rate]
    return below[-1] if below else None


def _sustained_step(run: SteppedFigures) -> StepFigures | None:
    if run.max_sustainable_per_s is None:
        return None
    return _step_at_or_below(run, run.max_sustainable_per_s)


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


def target_checks(report: BenchReport) -> list[TargetCheck]:
    """The issue's targets against this run's figures."""
    checks = [_pairs_check(report), _groups_check(report)]
    idle = report.idle
    if idle is None or idle.bytes_per_connection is None:
        checks.append(TargetCheck("idle RSS per connection", "-", f"<= {IDLE_BYTES} B", None))
    else:
        per = idle.bytes_per_connection
        checks.append(
            TargetCheck(
                "idle RSS per connection",
                f"{per:,.0f} B",
                f"<= {IDLE_BYTES:,} B",
                per <= IDLE_BYTES,
            )
        )
    offline = report.offline
    if offline is None:
        checks.append(TargetCheck("offline: last message after login", "-", "<= 1 s", None))
    else:
        met = offline.seconds_to_last <= OFFLINE_SECONDS and offline.lost == 0
        checks.append(
            TargetCheck(
                f"offline: last of {offline.stored} after login",
                f"{offline.seconds_to_last:.3f} s, {offline.lost} lost",
                "<= 1 s, 0 lost",
                met,
            )
        )
    return checks


def _pairs_check(report: BenchReport) -> TargetCheck:
    name = "pairs: max sustainable vs unpipelined ceiling"
    target = f">= {PAIRS_SHARE_OF_CEILING:.0%}, p99 < {PAIRS_P99_AT_HALF_MS:g} ms at half"
    share = ratios(report)["pairs_max_vs_unpipelined_ceiling"]
    if report.pairs is None or report.ceiling is None:
        return TargetCheck(name, "-", target, None)
    run = report.pairs.run
    if share is None or run.max_sustainable_per_s is None:
        return TargetCheck(name, "no sustainable step", target, False)
    half = _step_at_or_below(run, run.max_sustainable_per_s / 2)
    p99 = half.p99_ms if half is not None else None
    figure = f"{share:.1%}" + (f", p99 {p99:.1f} ms at {half.offered_per_s:,.0f}/s" if half else "")
    met = share >= PAIRS_SHARE_OF_CEILING and p99 is not None and p99 < PAIRS_P99_AT_HALF_MS
    return TargetCheck(name, figure, target, met)


def _groups_check(report: BenchReport) -> TargetCheck:
    name = "groups: member-messages/s sustained"
    target = f">= {GROUPS_RATE:,.0f}/s, p99 fan-out < {GROUPS_P99_MS:g} ms"
    if report.groups is None:
        return TargetCheck(name, "-", target, None)
    step = _sustained_step(report.groups.run)
    if step is None:
        return TargetCheck(name, "no sustainable step", target, False)
    figure = f"{step.offered_per_s:,.0f}/s, p99 {step.p99_ms:.1f} ms"
    met = step.offered_per_s >= GROUPS_RATE and step.p99_ms < GROUPS_P99_MS
    return TargetCheck(name, figure, target, met)
