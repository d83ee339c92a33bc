"""``pairs``: every user sends to a partner on another node, so every message crosses Redis.

The users are those of ``connect`` (registered and logged in there, if
``connect`` did not run in this invocation, it runs first). User 2k connects to
node k mod N and its partner 2k+1 to node k+1 mod N: with two or more nodes
each message leaves through one node's PUBLISH and arrives through the other
node's subscription. (``--via-nginx`` lets the balancer choose, so some pairs
may share a node.) Each user sends ``rate / users`` messages per second, open
loop; see ``steps`` for the stepping and ``stats`` for what "sustained" means.
"""

from dataclasses import dataclass

from clusterchat_bench.commands import Close, Done, FlowsReady, MakePairs
from clusterchat_bench.scenarios.connect import POOL
from clusterchat_bench.scenarios.context import ScenarioContext
from clusterchat_bench.scenarios.steps import SteppedFigures, run_steps

__all__ = ["PairsFigures", "close_pairs", "run_pairs"]


@dataclass(frozen=True)
class PairsFigures:
    """The ``pairs`` scenario's figures (rates in messages per second)."""

    users: int
    nodes: int
    cross_node: bool
    run: SteppedFigures


def run_pairs(ctx: ScenarioContext) -> PairsFigures:
    """Pair the logged-in users of the ``pairs`` pool and step the offered rate."""
    ready = ctx.workers.call([MakePairs(POOL)] * len(ctx.workers), FlowsReady, timeout=60.0)
    run = run_steps(ctx, POOL, ready, ctx.options.rates)
    nodes = len(ctx.cluster.endpoints)
    cross = nodes > 1 and ctx.cluster.front is None
    return PairsFigures(sum(r.flows for r in ready), nodes, cross, run)


def close_pairs(ctx: ScenarioContext) -> None:
    """Close the connections of ``connect`` and ``pairs``."""
    ctx.workers.call([Close(POOL)] * len(ctx.workers), Done, timeout=120.0)
