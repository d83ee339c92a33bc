"""``ceiling``: what the bus alone does on this machine, in the same run.

PUBLISH of an empty payload to a channel with exactly one subscriber, first
unpipelined (each of 50 clients waits for every reply), then pipelined (16
commands per round trip). With ``redis-benchmark`` installed (Debian's
redis-tools, which redis-server pulls in) it does the publishing and
``redis-cli SUBSCRIBE`` is the subscriber, both C programs, so the figure is
Redis' own. Without it, a redis-py (hiredis) loop in this process publishes
and subscribes, which measures the Python client as much as Redis; the
``method`` field says which one ran. Every other figure can be read as a
ratio of ``unpipelined_per_s``.
"""

import asyncio
import contextlib
import csv
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
import redis.asyncio

from clusterchat.cluster.processes import Child, spawn, stop
from clusterchat_bench.scenarios.context import ScenarioContext

__all__ = ["CeilingFigures", "run_ceiling"]

CLIENTS = 50
PIPELINE = 16
_SUBSCRIBE_TIMEOUT = 10.0
_RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class CeilingFigures:
    """PUBLISH commands per second to a channel with one subscriber."""

    method: str
    requests: int
    clients: int
    pipeline: int
    unpipelined_per_s: float
    pipelined_per_s: float
    subscribers: int


def run_ceiling(ctx: ScenarioContext) -> CeilingFigures:
    """Measure both rates against the cluster's Redis.

    Raises:
        RuntimeError: The Redis URL is unknown, or the subscriber never attached.
    """
    url = ctx.cluster.redis_url
    if url is None:
        raise RuntimeError("no Redis URL: pass --redis with --target")
    channel = f"bench-ceiling-{ctx.token}"
    requests = ctx.options.ceiling_requests
    benchmark = shutil.which("redis-benchmark")
    cli = shutil.which("redis-cli")
    with ctx.display.phase("ceiling", 2) as update:
        if benchmark and cli:
            figures = _with_redis_benchmark(url, channel, requests, benchmark, cli, update)
        else:
            figures = _with_redis_py(url, channel, requests, update)
    return figures


def _connection_args(url: str) -> list[str]:
    parts = urlsplit(url)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.password:
        args += ["-a", parts.password, "--no-auth-warning"]
    if parts.path.strip("/"):
        args += ["-n", parts.path.strip("/")]
    return args


def _subscribers(url: str, channel: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        counts = client.pubsub_numsub(channel)
    finally:
        client.close()
    return int(counts[0][1]) if counts else 0


def _wait_subscribed(url: str, channel: str, child: Child | None) -> None:
    deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
    while _subscribers(url, channel) < 1:
        if child is not None and not child.alive():
            raise RuntimeError(f"redis-cli SUBSCRIBE exited with {child.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no subscriber on {channel} after {_SUBSCRIBE_TIMEOUT:.0f}s")
        time.sleep(0.05)


def _with_redis_benchmark(
    url: str,
    channel: str,
    requests: int,
    benchmark: str,
    cli: str,
    update: Callable[[int], None],
) -> CeilingFigures:
    conn = _connection_args(url)
    subscriber = spawn("redis-cli", [cli, *conn, "SUBSCRIBE", channel], log_path=Path("/dev/null"))
    try:
        _wait_subscribed(url, channel, subscriber)
        rates = []
        for step, pipeline in enumerate((1, PIPELINE), start=1):
            argv = [benchmark, *conn, "-c", str(CLIENTS), "-n", str(requests)]
            argv += ["-P", str(pipeline), "--csv", "PUBLISH", channel, ""]
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_RUN_TIMEOUT, check=True
            )
            rates.append(_csv_rate(done.stdout))
            update(step)
        subscribers = _subscribers(url, channel)
    finally:
        stop(subscriber, timeout=5.0)
    return CeilingFigures(
        "redis-benchmark", requests, CLIENTS, PIPELINE, rates[0], rates[1], subscribers
    )


def _csv_rate(output: str) -> float:
    rows = list(csv.reader(line for line in output.splitlines() if line.strip()))
    for row in rows[1:]:
        if row and row[0].startswith("PUBLISH"):
            return float(row[1])
    raise RuntimeError(f"unexpected redis-benchmark output: {output[-300:]!r}")


def _with_redis_py(
    url: str, channel: str, requests: int, update: Callable[[int], None]
) -> CeilingFigures:
    rates = []
    subscribers = 0
    for step, pipeline in enumerate((1, PIPELINE), start=1):
        rate, subscribers = asyncio.run(_py_rate(url, channel, requests, pipeline))
        rates.append(rate)
        update(step)
    return CeilingFigures("redis-py", requests, CLIENTS, PIPELINE, rates[0], rates[1], subscribers)


async def _py_rate(url: str, channel: str, requests: int, pipeline: int) -> tuple[float, int]:
    listener = redis.asyncio.Redis.from_url(url, socket_timeout=None)
    publisher = redis.asyncio.Redis.from_url(url, max_connections=CLIENTS)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)

    async def drain() -> None:
        async for _message in pubsub.listen():
            pass

    reader = asyncio.get_running_loop().create_task(drain())
    try:
        async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
            # Polling Redis is the only way to learn that the subscription is active.
            while (await publisher.pubsub_numsub(channel))[0][1] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        rounds = max(1, requests // (CLIENTS * pipeline))

        async def client() -> None:
            for _ in range(rounds):
                if pipeline == 1:
                    await publisher.publish(channel, b"")
                    continue
                pipe = publisher.pipeline(transaction=False)
                for _ in range(pipeline):
                    pipe.publish(channel, b"")
                await pipe.execute()

        start = time.perf_counter()
        async with asyncio.timeout(_RUN_TIMEOUT):
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
        seconds = time.perf_counter() - start
        subscribers = int((await publisher.pubsub_numsub(channel))[0][1])
        return rounds * CLIENTS * pipeline / seconds, subscribers
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        await publisher.aclose()
