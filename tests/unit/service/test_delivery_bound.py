"""Delivery's bound on publishes in flight (service/delivery.py, ``MAX_INFLIGHT``).

A committed message to a large group becomes one envelope per member. They
must not all be handed to the bus at once: only ``MAX_INFLIGHT`` bytes of
envelopes are in flight, the rest wait as positions of the message (no
envelope built) and are published, in order, as the bus answers.
"""

import asyncio
from typing import cast

from clusterchat.bus.base import Bus
from clusterchat.service.delivery import MAX_INFLIGHT, Delivery
from clusterchat.service.envelope import decode_envelope
from clusterchat.service.sessions import SessionRegistry
from clusterchat.store.base import Appended, MessageLog


class _HeldBus:
    """A bus whose publishes are answered only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[asyncio.Future[int], bytes]] = []
        self.published: list[bytes] = []

    def publish(self, channel: str, payload: bytes) -> "asyncio.Future[int]":
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append((future, payload))
        self.published.append(payload)
        return future

    def in_flight(self) -> int:
        return sum(len(payload) for future, payload in self.waiting if not future.done())

    def answer_all(self) -> None:
        for future, _ in self.waiting:
            if not future.done():
                future.set_result(1)
        self.waiting.clear()


async def _nobody(_user: int) -> None:
    return None


async def test_a_message_to_many_members_publishes_at_most_the_bound_at_once() -> None:
    bus = _HeldBus()
    delivery = Delivery(
        "n1", SessionRegistry(_nobody, _nobody), cast(Bus, bus), cast(MessageLog, None)
    )
    members = 20_000  # 1 KB each: about 20 MB of envelopes, the bound is 8 MiB
    positions = tuple((user, 7) for user in range(1, members + 1))
    delivery.committed(
        Appended("m1", 1, "2026-12-01 10:00:00", b'{"msg":"' + b"x" * 1000 + b'"}', positions)
    )

    envelope = len(bus.published[0])
    assert bus.in_flight() <= MAX_INFLIGHT + envelope
    assert len(bus.published) < members
    waiting_senders = delivery.full
    assert waiting_senders  # the senders wait meanwhile

    for _ in range(100):  # the bus answers; the rest goes out as it does
        if len(bus.published) == members and not bus.in_flight():
            break
        bus.answer_all()
        await asyncio.sleep(0)
        assert bus.in_flight() <= MAX_INFLIGHT + envelope
    users = [decode_envelope(payload).user for payload in bus.published]
    assert users == list(range(1, members + 1))  # each once, in order
    assert not delivery.full
    assert not delivery.busy
