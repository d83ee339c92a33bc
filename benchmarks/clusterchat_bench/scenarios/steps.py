"""Stepped open-loop load over a pool's flows, shared by ``pairs`` and ``groups``.

First a warm-up step sends one message per flow (it fills the nodes' caches
and proves every flow delivers); then each offered rate runs for
``--step-seconds`` plus a drain, split over the workers in proportion to their
flows. Stepping stops after the first step that is not sustainable
(``clusterchat_bench.stats``); the maximum sustainable rate is the highest
offered rate before it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

from clusterchat_bench.commands import FlowsReady, Step, StepDone
from clusterchat_bench.scenarios.context import ScenarioContext
from clusterchat_bench.stats import StepFigures, merge_step

__all__ = ["BUSY_OTHERS", "SteppedFigures", "cpu_text", "run_steps"]

_WARMUP_DRAIN = 5.0
#: CPU (percent of one core) taken by other work above which a step is flagged.
BUSY_OTHERS = 50.0


@dataclass(frozen=True)
class SteppedFigures:
    """A stepped run: its warm-up, its steps, and the highest rate sustained.

    Attributes:
        flows: Senders (one per user for ``pairs``, one per group for ``groups``).
        receivers_per_message: Deliveries each message should make.
        warmup: One message per flow, before the steps.
        steps: The steps run, in order; the last one failed unless all passed.
        max_sustainable_per_s: The highest sustainable offered rate (None: none was).
        stopped_because: Why stepping ended.
    """

    flows: int
    receivers_per_message: float
    warmup: StepFigures
    steps: tuple[StepFigures, ...]
    max_sustainable_per_s: float | None
    stopped_because: str


def run_steps(
    ctx: ScenarioContext, pool: str, ready: Sequence[FlowsReady | None], rates: Sequence[int]
) -> SteppedFigures:
    """Warm up, then offer each rate (deliveries per second) in turn until one fails.

    Args:
        ctx: The run.
        pool: The workers' pool holding the flows.
        ready: Per worker, its flows (None: the worker has none).
        rates: Offered deliveries per second, ascending.
    """
    flows = [r.flows if r is not None else 0 for r in ready]
    total_flows = sum(flows)
    receivers = sum(r.receivers for r in ready if r is not None)
    if total_flows == 0:
        raise RuntimeError(f"pool {pool}: no flows to send on")
    per_message = receivers / total_flows
    options = ctx.options

    def step(number: int, offered: float, seconds: float, drain: float, label: str) -> StepFigures:
        message_rate = offered / per_message
        commands: list[Step | None] = []
        for share in flows:
            if share == 0:
                commands.append(None)
                continue
            rate = message_rate * share / total_flows
            commands.append(Step(pool, number, rate, max(1, round(rate * seconds)), drain))
        total = sum(c.count for c in commands if c is not None)
        meter = ctx.meter()
        with ctx.display.phase(label, total) as update:
            parts = ctx.workers.call(
                commands,
                StepDone,
                timeout=2 * seconds + 2 + drain + 60,
                on_progress=update,
            )
        use = meter.stop()
        figures = merge_step(number, offered, seconds, parts, options.p99_limit_ms)
        nodes = ctx.node_names()  # none for a --target whose nodes were not found
        node_us = None
        if nodes and figures.messages_sent:
            node_us = round(1e6 * use.seconds(nodes) / figures.messages_sent, 1)
        return replace(figures, cpu_percent=use.percent(), node_us_per_message=node_us)

    # Warm-up: one message per flow in about a second.
    warmup = step(0, float(receivers), 1.0, max(options.drain_seconds, _WARMUP_DRAIN), "warm-up")
    ctx.display.note(_line("warm-up", warmup, options.quick))
    done: list[StepFigures] = []
    stopped = "every offered rate was sustained"
    for number, offered in enumerate(rates, start=1):
        figures = step(
            number,
            float(offered),
            options.step_seconds,
            options.drain_seconds,
            f"{offered:,}/s",
        )
        done.append(figures)
        ctx.display.note(_line(f"{offered:,}/s", figures, options.quick))
        if not figures.sustainable:
            stopped = f"{offered:,}/s not sustained: {'; '.join(figures.reasons)}"
            break
    sustained = [f.offered_per_s for f in done if f.sustainable]
    return SteppedFigures(
        flows=total_flows,
        receivers_per_message=per_message,
        warmup=warmup,
        steps=tuple(done),
        max_sustainable_per_s=max(sustained) if sustained else None,
        stopped_because=stopped,
    )


def _line(label: str, f: StepFigures, quick: bool) -> str:
    """One step's figures; outside a smoke run, whether it was sustained (``stats``)."""
    sustained = ""
    if not quick:
        sustained = ", sustained" if f.sustainable else ", not sustained"
    return (
        f"  {label:>10} delivered {f.delivered_per_s:>9,.0f}/s p50 {f.p50_ms:.1f} "
        f"p99 {f.p99_ms:.1f} max {f.max_ms:.1f} ms, lost {f.lost}, dup {f.duplicated}{sustained}"
        f" (cpu% {cpu_text(f.cpu_percent)}; nodes+log {_us(f.node_us_per_message)} per message)"
    )


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} us"


def cpu_text(cpu: dict[str, float]) -> str:
    """``n1 95 n2 97 redis 30 loadgen 80 ...``: percent of one core per process."""
    text = " ".join(f"{name} {value:.0f}" for name, value in cpu.items())
    if cpu.get("others", 0.0) > BUSY_OTHERS:
        text += " (BUSY MACHINE: other work competed)"
    return text
