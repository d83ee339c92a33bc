"""The worker side of the ``offline`` scenario: store K messages, log in, time their arrival.

A sender logs in and sends ``count`` messages to a registered user that has
never logged in; each is acknowledged (``chat_acked``), so each was accepted
and will be stored. The node writes stored messages behind the
acknowledgement (in batches), so the probe waits ``settle`` seconds before the
receiver logs in: the figure is the time to get messages that are already in
the database. Then it logs the receiver in and counts the messages of the
login answer and the pushes that follow, until all ``count`` arrived or
``timeout`` passed.
"""

import asyncio
import time

from clusterchat.client import ChatClient, offline_messages
from clusterchat.protocol import GroupChat, OneChat
from clusterchat_bench.commands import Offline, OfflineDone
from clusterchat_bench.pool import open_client

__all__ = ["run_offline"]

_ACK_BATCH = 100


async def run_offline(command: Offline) -> OfflineDone:
    """Run the probe.

    Raises:
        ChatClientError: Registering or logging in was refused.
        OSError: A connection could not be made.
        TimeoutError: Setting up took longer than ``command.timeout``.
    """
    sender = await open_client(command.sender)
    receiver = await open_client(command.receiver)
    try:
        async with asyncio.timeout(command.timeout):
            sender_id = (await sender.register(command.sender.name, command.password)).id
            receiver_id = (await receiver.register(command.receiver.name, command.password)).id
            assert sender_id is not None
            assert receiver_id is not None
            await sender.login(sender_id, command.password)
            stored, errors = await _store(sender, receiver_id, command.count)
        await asyncio.sleep(command.settle)
        return await _collect(receiver, receiver_id, command, stored, errors)
    finally:
        await sender.close()
        await receiver.close()


async def _store(sender: ChatClient, receiver_id: int, count: int) -> tuple[list[str], int]:
    texts = [f"offline:{n}" for n in range(count)]
    errors = 0
    stored: list[str] = []
    for start in range(0, count, _ACK_BATCH):
        batch = texts[start : start + _ACK_BATCH]
        # Sent together, answered in order: one round trip per batch, not per message.
        answers = await asyncio.gather(
            *(sender.chat_acked(receiver_id, text, check=False) for text in batch)
        )
        for text, answer in zip(batch, answers, strict=True):
            if answer.errno == 0:
                stored.append(text)
            else:
                errors += 1
    return stored, errors


async def _collect(
    receiver: ChatClient, receiver_id: int, command: Offline, stored: list[str], errors: int
) -> OfflineDone:
    wanted = set(stored)
    seen: list[str] = []
    distinct: set[str] = set()
    start = time.monotonic()
    ack = await receiver.login(receiver_id, command.password)
    in_answer = [m.msg for m in offline_messages(ack)]
    last = time.monotonic()
    for text in in_answer:
        seen.append(text)
        distinct.add(text)
    try:
        async with asyncio.timeout(command.timeout):
            while not wanted <= distinct:
                message = await receiver.next_message()
                if isinstance(message, OneChat | GroupChat):
                    last = time.monotonic()
                    seen.append(message.msg)
                    distinct.add(message.msg)
    except (TimeoutError, ConnectionError):
        pass
    received = len(distinct & wanted)
    first_arrivals = list(dict.fromkeys(text for text in seen if text in wanted))
    return OfflineDone(
        count=len(stored),
        received=received,
        duplicated=len(seen) - len(distinct),
        in_order=first_arrivals == [text for text in stored if text in distinct],
        in_login_answer=len(in_answer),
        seconds_to_last=last - start,
        errors=errors,
    )
