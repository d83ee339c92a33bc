"""What Delivery publishes: one envelope per group message, and a bound on those in flight.

A group message is one envelope on the group's channel, whatever the number
of members. Envelopes must not all be handed to the bus at once
(service/delivery.py, ``MAX_INFLIGHT``): only that many bytes are in flight,
the rest wait as positions of their messages (no envelope built) and are
published, in order, as the bus answers.
"""

import asyncio
from typing import cast

from clusterchat.bus.base import Bus
from clusterchat.service.delivery import MAX_INFLIGHT, Delivery
from clusterchat.service.envelope import Kind, decode_envelope
from clusterchat.service.sessions import SessionRegistry
from clusterchat.store.base import Appended, MessageLog


class _HeldBus:
    """A bus whose publishes are answered only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[asyncio.Future[int], bytes]] = []
        self.published: list[bytes] = []
        self.channels: list[str] = []

    def publish(self, channel: str, payload: bytes) -> "asyncio.Future[int]":
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append((future, payload))
        self.published.append(payload)
        self.channels.append(channel)
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


async def test_a_group_message_is_one_envelope_on_the_groups_channel() -> None:
    bus = _HeldBus()
    delivery = Delivery(
        "n1", SessionRegistry(_nobody, _nobody), cast(Bus, bus), cast(MessageLog, None)
    )
    positions = tuple((user, user * 3) for user in range(1, 501))
    delivery.committed(Appended("m1", 1, "2026-12-01 10:00:00", b'{"msg":"hi"}', positions), 7)

    assert bus.channels == ["group:7"]
    envelope = decode_envelope(bus.published[0])
    assert (envelope.kind, envelope.origin, envelope.group) == (Kind.GROUP_DELIVER, "n1", 7)
    assert bytes(envelope.body) == b'{"msg":"hi"}'
    pairs = list(zip(envelope.entries[::2], envelope.entries[1::2], strict=True))
    assert pairs == list(positions)


async def test_envelopes_to_many_users_are_published_at_most_the_bound_at_once() -> None:
    """20,000 one-to-one envelopes (as one message with that many recipients, for brevity)."""
    bus = _HeldBus()
    delivery = Delivery(
        "n1", SessionRegistry(_nobody, _nobody), cast(Bus, bus), cast(MessageLog, None)
    )
    members = 20_000  # 1 KB each: about 20 MB of envelopes, the bound is 8 MiB
    positions = tuple((user, 7) for user in range(1, members + 1))
    delivery.committed(
        Appended("m1", 1, "2026-12-01 10:00:00", b'{"msg":"' + b"x" * 1000 + b'"}', positions),
        None,
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
