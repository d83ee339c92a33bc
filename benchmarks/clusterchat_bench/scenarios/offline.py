"""``offline``: a user logs in with K stored messages; time until the last one has arrived.

One worker registers a sender and a receiver (on different nodes when there
are several), stores K acknowledged messages for the receiver while it has
never logged in, waits a moment for the node's write-behind store, then logs
the receiver in and times the login answer (up to 1000 messages) plus the
pushes that carry the rest. See ``clusterchat_bench.offline_probe``.
"""

from dataclasses import dataclass

from clusterchat_bench.commands import Offline, OfflineDone, UserSpec
from clusterchat_bench.scenarios.context import ScenarioContext

__all__ = ["OfflineFigures", "run_offline"]


@dataclass(frozen=True)
class OfflineFigures:
    """The ``offline`` scenario's figures."""

    messages: int
    stored: int
    received: int
    lost: int
    duplicated: int
    in_order: bool
    in_login_answer: int
    seconds_to_last: float
    store_refusals: int
    settle_seconds: float


def run_offline(ctx: ScenarioContext) -> OfflineFigures:
    """Run the probe on the first worker."""
    count = ctx.options.offline
    settle = 0.5 if ctx.options.quick else 1.0
    command = Offline(
        sender=UserSpec(f"{ctx.token}-os", ctx.endpoint(0)),
        receiver=UserSpec(f"{ctx.token}-or", ctx.endpoint(1)),
        password=ctx.password,
        count=count,
        settle=settle,
        timeout=30.0 + count * 0.01,
    )
    commands: list[Offline | None] = [None] * len(ctx.workers)
    commands[0] = command
    with ctx.display.phase("offline", 1) as update:
        (done,) = ctx.workers.call(commands, OfflineDone, timeout=command.timeout * 3 + settle)
        update(1)
    return _figures(count, settle, done)


def _figures(count: int, settle: float, done: OfflineDone) -> OfflineFigures:
    return OfflineFigures(
        messages=count,
        stored=done.count,
        received=done.received,
        lost=done.count - done.received,
        duplicated=done.duplicated,
        in_order=done.in_order,
        in_login_answer=done.in_login_answer,
        seconds_to_last=done.seconds_to_last,
        store_refusals=done.errors,
        settle_seconds=settle,
    )
