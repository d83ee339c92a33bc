"""``groups``: G groups of S members spread over the nodes, one sender per group.

Member j of group k connects to node (k + j) mod N, so every group has members
on every node and each group message fans out both locally and through
Redis. The first member creates the group and is its only sender; the others
join. Offered rates are member-messages per second (group messages times the
S - 1 members that receive each), and the latency of a message is its fan-out
latency: from sending to the arrival at its last member.
"""

from dataclasses import dataclass

from clusterchat_bench.commands import Close, Done, FlowsReady, MakeGroups, UserSpec
from clusterchat_bench.scenarios.connect import PhaseFigures, connect_users
from clusterchat_bench.scenarios.context import ScenarioContext, deal
from clusterchat_bench.scenarios.steps import SteppedFigures, run_steps

__all__ = ["GroupsFigures", "run_groups"]

POOL = "groups"


@dataclass(frozen=True)
class GroupsFigures:
    """The ``groups`` scenario's figures (rates in member-messages per second)."""

    groups: int
    group_size: int
    register: PhaseFigures
    login: PhaseFigures
    setup_failures: tuple[str, ...]
    run: SteppedFigures


def run_groups(ctx: ScenarioContext) -> GroupsFigures:
    """Create the groups, step the offered fan-out rate, close the members' connections."""
    count, size = ctx.options.groups, ctx.options.group_size
    units = [
        [UserSpec(f"{ctx.token}-g{k}m{j}", ctx.endpoint(k + j)) for j in range(size)]
        for k in range(count)
    ]
    hands = deal(units, len(ctx.workers))
    try:
        register, login = connect_users(ctx, POOL, hands, "groups")
        with ctx.display.phase("groups: create and join", count) as update:
            ready = ctx.workers.call(
                [
                    MakeGroups(POOL, size, f"{ctx.token}-w{i}") if hand else None
                    for i, hand in enumerate(hands)
                ],
                FlowsReady,
                timeout=120.0 + count * size * 0.05,
            )
            update(sum(r.flows for r in ready))
        failures = tuple(f for r in ready for f in r.failures)[:5]
        slots: list[FlowsReady | None] = []
        answers = iter(ready)
        for hand in hands:
            slots.append(next(answers) if hand else None)
        run = run_steps(ctx, POOL, slots, ctx.options.group_rates)
    finally:
        ctx.workers.call([Close(POOL)] * len(ctx.workers), Done, timeout=120.0)
    return GroupsFigures(count, size, register, login, failures, run)
