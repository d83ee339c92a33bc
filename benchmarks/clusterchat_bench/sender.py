"""The open-loop sender of one step: messages at a fixed offered rate, whatever the replies.

Message n of a step is due at ``start + n / rate``. The sender wakes at most
every few milliseconds, sends every message that is due (round-robin over the
pool's flows, so each flow sends ``rate / flows`` per second), and records how
late it was against that schedule (``lag_max_us``): a large lag means the load
generator, not the cluster, limited the step. A sender still sending after
twice the step's planned duration plus two seconds gives up (``aborted``), so
every step is bounded in time. After the last send it waits for the missing deliveries, at
most ``drain`` seconds.
"""

import asyncio
import time
from collections.abc import Callable

from clusterchat_bench.commands import StepDone
from clusterchat_bench.pool import Pool

__all__ = ["run_step"]

_MIN_SLEEP = 0.001
_MAX_SLEEP = 0.005


async def run_step(
    pool: Pool, step: int, rate: float, count: int, drain: float, progress: Callable[[int], None]
) -> StepDone:
    """Offer ``count`` messages at ``rate`` per second over ``pool.flows``, then drain.

    Returns:
        The step's figures as this worker saw them.

    Raises:
        ValueError: The pool has no flows, or the rate is not positive.
    """
    flows = pool.flows
    if not flows or rate <= 0:
        raise ValueError(f"step {step}: {len(flows)} flows at rate {rate}")
    recorder = pool.recorder
    recorder.begin(step)
    interval_ns = 1e9 / rate
    start = time.monotonic_ns()
    give_up = start + int((count / rate + 1.0) * 2e9)
    sent = lag_max = 0
    turn = 0
    aborted = False
    while sent < count:
        now = time.monotonic_ns()
        due = min(count, int((now - start) / interval_ns) + 1)
        if due > sent:
            lag_max = max(lag_max, now - int(start + sent * interval_ns))
        while sent < due:
            flow = flows[turn]
            turn = (turn + 1) % len(flows)
            text = recorder.next_message(flow.receivers)
            try:
                await flow.send(text)
            except ConnectionError as exc:
                recorder.error(f"send failed: {exc}")
            sent += 1
        progress(sent)
        if sent >= count:
            break
        if now > give_up:
            aborted = True
            break
        wait = (start + sent * interval_ns - time.monotonic_ns()) / 1e9
        await asyncio.sleep(min(_MAX_SLEEP, max(_MIN_SLEEP, wait)))
    send_ended = time.monotonic_ns()
    recorder.end_sending()
    try:
        async with asyncio.timeout(drain):
            await recorder.done.wait()
    except TimeoutError:
        pass
    late, recorder.late = recorder.late, 0
    return StepDone(
        step=step,
        sent=recorder.sent,
        expected=recorder.expected,
        received=recorder.received,
        duplicated=recorder.duplicated,
        late=late,
        errors=recorder.errors,
        error_sample=recorder.error_sample,
        started_ns=start,
        send_ended_ns=send_ended,
        last_received_ns=recorder.last_received_ns,
        latencies_us=recorder.latencies_us.tobytes(),
        lag_max_us=lag_max // 1000,
        aborted=aborted,
    )
