"""``connect``: U users register and log in, spread over the nodes; both rates per second.

Registering goes over a few connections per node, shared by many users (a
node closes a connection that stays logged out too long); logging in opens
each user's own connection and logs in on it, and that connection stays open
(``pairs`` reuses these users). Both phases run from all workers at once with
bounded concurrency; a rate is the users that succeeded divided by the time
from the first start to the last finish, all workers together, so the login
rate includes opening the TCP connection. User names carry the run's token,
so runs against a long-lived cluster never collide.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from clusterchat_bench.commands import Login, PhaseDone, Register, UserSpec
from clusterchat_bench.scenarios.context import ScenarioContext, deal

__all__ = ["ConnectFigures", "PhaseFigures", "connect_users", "pair_specs", "run_connect"]

POOL = "pairs"
_CONCURRENCY = 100


@dataclass(frozen=True)
class PhaseFigures:
    """Registering or logging in a set of users, all workers together."""

    users: int
    succeeded: int
    failed: int
    seconds: float
    per_second: float
    failures: tuple[str, ...]


@dataclass(frozen=True)
class ConnectFigures:
    """The ``connect`` scenario's figures."""

    users: int
    nodes: int
    register: PhaseFigures
    login: PhaseFigures


def _merge(users: int, parts: Sequence[PhaseDone]) -> PhaseFigures:
    if not parts:
        return PhaseFigures(users, 0, 0, 0.0, 0.0, ())
    seconds = (max(p.ended_ns for p in parts) - min(p.started_ns for p in parts)) / 1e9
    done = sum(p.done for p in parts)
    failures = tuple(f for p in parts for f in p.failures)[:5]
    rate = done / seconds if seconds > 0 else 0.0
    return PhaseFigures(users, done, sum(p.failed for p in parts), seconds, rate, failures)


def connect_users(
    ctx: ScenarioContext, pool: str, hands: Sequence[Sequence[UserSpec]], label: str
) -> tuple[PhaseFigures, PhaseFigures]:
    """Register, then log in, ``hands[i]`` on worker i, into pool ``pool``.

    Returns:
        The register and login figures.
    """
    total = sum(len(hand) for hand in hands)
    timeout = 120.0 + total * 0.05
    with ctx.display.phase(f"{label}: register", total) as update:
        registered = ctx.workers.call(
            [Register(pool, tuple(h), ctx.password, _CONCURRENCY) if h else None for h in hands],
            PhaseDone,
            timeout=timeout,
            on_progress=update,
        )
    with ctx.display.phase(f"{label}: log in", total) as update:
        logged_in = ctx.workers.call(
            [Login(pool, ctx.password, _CONCURRENCY) if h else None for h in hands],
            PhaseDone,
            timeout=timeout,
            on_progress=update,
        )
    return _merge(total, registered), _merge(total, logged_in)


def pair_specs(ctx: ScenarioContext, count: int, kind: str) -> list[list[UserSpec]]:
    """``count // 2`` pairs of users whose two members connect to different nodes."""
    nodes = len(ctx.cluster.endpoints)
    pairs = []
    for k in range(count // 2):
        a = UserSpec(f"{ctx.token}-{kind}{2 * k}", ctx.endpoint(k))
        b = UserSpec(f"{ctx.token}-{kind}{2 * k + 1}", ctx.endpoint(k + 1 if nodes > 1 else k))
        pairs.append([a, b])
    return pairs


def run_connect(ctx: ScenarioContext) -> ConnectFigures:
    """Register and log in ``--users`` users into the ``pairs`` pool (left connected)."""
    hands = deal(pair_specs(ctx, ctx.options.users, "u"), len(ctx.workers))
    register, login = connect_users(ctx, POOL, hands, "connect")
    return ConnectFigures(ctx.options.users, len(ctx.cluster.endpoints), register, login)
