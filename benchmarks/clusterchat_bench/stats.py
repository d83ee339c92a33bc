"""Figures of a step from every worker's account of it, and whether it was sustained.

A step is *sustainable* when the cluster delivered at least 95% of the offered
rate, its p99 latency stayed under the limit (100 ms unless told otherwise)
and nothing was lost or duplicated. The delivered rate is the distinct
deliveries divided by the time from the first send to the last delivery, so a
backlog that drains late lowers it (and never over less than the step's
planned duration, which would inflate it).
"""

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from clusterchat_bench.commands import StepDone

__all__ = ["DELIVERED_SHARE", "StepFigures", "merge_step", "percentile"]

#: The share of the offered rate a sustainable step must deliver.
DELIVERED_SHARE = 0.95


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of ascending values (0 when there are none)."""
    if not sorted_values:
        return 0
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class StepFigures:
    """One step of ``pairs`` or ``groups``, all workers together.

    Attributes:
        step: The step number (1-based).
        offered_per_s: Offered deliveries per second (messages for ``pairs``,
            member-messages for ``groups``).
        messages_sent: Messages sent (group messages count once).
        sent_per_s: Deliveries offered per second as actually sent.
        expected: Deliveries expected.
        delivered: Distinct deliveries before the drain ended.
        delivered_per_s: ``delivered`` over first send to last delivery.
        p50_ms: Median latency, send to last receiver.
        p99_ms: 99th percentile latency.
        max_ms: Largest latency.
        lost: ``expected - delivered`` after the drain.
        duplicated: Deliveries that arrived twice.
        late: Deliveries of the previous step that arrived during this one.
        errors: Refusals and error answers.
        error_sample: One of them, if any.
        generator_lag_ms: How far behind schedule the slowest sender fell.
        generator_aborted: A sender gave up offering the rate.
        sustainable: Whether the step met the criterion above.
        reasons: Why not, when not.
        cpu_percent: Per process (or group of processes), percent of one core
            used during the step and its drain.
        node_us_per_message: CPU time of all the nodes together, and on
            SQLite of their log writer process, during the step and its
            drain, per message sent (a group message counts once), in
            microseconds (None: no message was sent, or a ``--target`` run whose
            nodes were not found on this machine).
    """

    step: int
    offered_per_s: float
    messages_sent: int
    sent_per_s: float
    expected: int
    delivered: int
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    lost: int
    duplicated: int
    late: int
    errors: int
    error_sample: str
    generator_lag_ms: float
    generator_aborted: bool
    sustainable: bool
    reasons: tuple[str, ...]
    cpu_percent: dict[str, float] = field(default_factory=dict)
    node_us_per_message: float | None = None


def merge_step(
    step: int,
    offered_per_s: float,
    seconds: float,
    parts: Sequence[StepDone],
    p99_limit_ms: float,
) -> StepFigures:
    """Combine the workers' accounts of one step (planned to last ``seconds``) and judge it."""
    latencies = array("q")
    for part in parts:
        latencies.frombytes(part.latencies_us)
    ordered = sorted(latencies)
    started = min(p.started_ns for p in parts)
    send_ended = max(p.send_ended_ns for p in parts)
    last = max(p.last_received_ns for p in parts)
    expected = sum(p.expected for p in parts)
    delivered = sum(p.received for p in parts)
    sent = sum(p.sent for p in parts)
    send_seconds = max(send_ended - started, 1) / 1e9
    # Never less than the planned duration: the last message is due a little before its end.
    delivering = max(seconds, (last - started) / 1e9)
    delivered_per_s = delivered / delivering if delivered else 0.0
    figures = StepFigures(
        step=step,
        offered_per_s=offered_per_s,
        messages_sent=sent,
        sent_per_s=expected / send_seconds if sent > 1 else float(expected),
        expected=expected,
        delivered=delivered,
        delivered_per_s=delivered_per_s,
        p50_ms=percentile(ordered, 0.50) / 1000,
        p99_ms=percentile(ordered, 0.99) / 1000,
        max_ms=(ordered[-1] if ordered else 0) / 1000,
        lost=expected - delivered,
        duplicated=sum(p.duplicated for p in parts),
        late=sum(p.late for p in parts),
        errors=sum(p.errors for p in parts),
        error_sample=next((p.error_sample for p in parts if p.error_sample), ""),
        generator_lag_ms=max(p.lag_max_us for p in parts) / 1000,
        generator_aborted=any(p.aborted for p in parts),
        sustainable=False,
        reasons=(),
    )
    reasons = _unsustained_because(figures, p99_limit_ms)
    return replace(figures, sustainable=not reasons, reasons=reasons)


def _unsustained_because(f: StepFigures, p99_limit_ms: float) -> tuple[str, ...]:
    reasons = []
    if f.delivered_per_s < DELIVERED_SHARE * f.offered_per_s:
        share = f"{DELIVERED_SHARE:.0%} of {f.offered_per_s:,.0f}/s"
        reasons.append(f"delivered {f.delivered_per_s:,.0f}/s < {share}")
    if f.p99_ms >= p99_limit_ms:
        reasons.append(f"p99 {f.p99_ms:.1f} ms >= {p99_limit_ms:g} ms")
    if f.lost:
        reasons.append(f"{f.lost} lost")
    if f.duplicated:
        reasons.append(f"{f.duplicated} duplicated")
    if f.errors:
        reasons.append(f"{f.errors} errors ({f.error_sample})")
    if f.generator_aborted:
        reasons.append("load generator could not offer the rate")
    return tuple(reasons)
