"""ChatClient's acknowledged delivery against a scripted peer: device login, cursors,
de-duplication, coalesced automatic acks, explicit acks, client message ids."""

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from clusterchat.client import ChatClient
from clusterchat.protocol import GroupChat, GroupChatAck, LoginAck, OneChat, OneChatAck
from tests.support.timing import seconds
from tests.unit.client.peer import CannedPeer, PeerConnection

Pair = tuple[ChatClient, PeerConnection]
T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(seconds(5)):
        return await awaitable


def _push(cursor: int | None, text: str | None = None, *, mid: str | None = None) -> dict[str, Any]:
    push: dict[str, Any] = {
        "msgid": 6,
        "id": 2,
        "name": "bob",
        "toid": 1,
        "msg": text or f"m{cursor}",
        "time": "2024-05-01 12:00:00",
        "mid": mid or f"mid-{cursor}",
    }
    if cursor is not None:
        push["cursor"] = cursor
    return push


async def _device_login(
    client: ChatClient,
    server: PeerConnection,
    *,
    cursor: int = 0,
    after: int | None = None,
    auto_ack: bool = True,
    then: tuple[dict[str, Any], ...] = (),
) -> dict[str, object]:
    """Log in as device "phone-1"; the answer (and ``then``, in the same write) carry cursors."""
    task = asyncio.create_task(
        client.login(1, "pw", device="phone-1", after=after, auto_ack=auto_ack)
    )
    request = await server.receive()
    await server.send({"msgid": 2, "errno": 0, "id": 1, "name": "a", "cursor": cursor}, *then)
    ack = await _within(task)
    assert ack.cursor == cursor
    return request


async def _texts(client: ChatClient, count: int) -> list[str]:
    texts = []
    for _ in range(count):
        message = await client.next_message(seconds(5))
        assert isinstance(message, OneChat | GroupChat), message
        texts.append(message.msg)
    return texts


async def _acks_until_ping(client: ChatClient, server: PeerConnection) -> list[int]:
    """Every Ack the client wrote before a ping it sends now (the ping is answered)."""
    ping = asyncio.create_task(client.ping())
    acks: list[int] = []
    while True:
        frame = await server.receive()
        if frame["msgid"] == 120:
            await server.send({"msgid": 121, "ref": frame["ref"]})
            await _within(ping)
            return acks
        assert frame["msgid"] == 130, frame
        assert set(frame) == {"msgid", "cursor"}, frame
        cursor = frame["cursor"]
        assert isinstance(cursor, int)
        acks.append(cursor)


async def test_device_login_sends_device_and_after(pair: Pair) -> None:
    """login(device=, after=) puts both on the wire and starts a device session."""
    client, server = pair
    assert (client.acking, client.cursor, client.device) == (False, None, None)
    request = await _device_login(client, server, cursor=7, after=7)
    assert request == {"msgid": 1, "id": 1, "password": "pw", "device": "phone-1", "after": 7}
    assert client.acking
    assert client.device == "phone-1"
    assert (client.cursor, client.acked_cursor) == (7, 7)


async def test_classic_login_sends_neither_field(pair: Pair) -> None:
    """A login without device is the classic request, and the session acks nothing."""
    client, server = pair
    task = asyncio.create_task(client.login(1, "pw"))
    assert await server.receive() == {"msgid": 1, "id": 1, "password": "pw"}
    await server.send({"msgid": 2, "errno": 0, "id": 1, "name": "a"}, _push(None, "plain"))
    await _within(task)
    assert not client.acking
    assert await _texts(client, 1) == ["plain"]
    assert await _acks_until_ping(client, server) == []


async def test_after_without_device_is_refused(pair: Pair) -> None:
    """after only means something for a device."""
    client, _server = pair
    with pytest.raises(ValueError, match="device"):
        await client.login(1, "pw", after=3)
    with pytest.raises(ValueError, match="negative"):
        await client.login(1, "pw", device="d", after=-1)


async def test_pushes_are_acknowledged_once_per_read(pair: Pair) -> None:
    """Fifty pushes in one write are passed on in order and acknowledged by one Ack."""
    client, server = pair
    await _device_login(client, server)
    await server.send(*(_push(cursor) for cursor in range(1, 51)))
    assert await _texts(client, 50) == [f"m{cursor}" for cursor in range(1, 51)]
    assert await _acks_until_ping(client, server) == [50]
    assert (client.cursor, client.acked_cursor, client.acks_sent) == (50, 50, 1)


async def test_pushes_right_behind_the_login_answer_are_tracked(pair: Pair) -> None:
    """Pushes in the same read as the LoginAck already count as a device session's."""
    client, server = pair
    await _device_login(client, server, cursor=3, then=(_push(3), _push(4), _push(5)))
    assert await _texts(client, 2) == ["m4", "m5"]
    assert client.duplicates_dropped == 1
    assert await _acks_until_ping(client, server) == [5]


async def test_repeated_and_older_cursors_are_dropped_and_counted(pair: Pair) -> None:
    """A push whose cursor is not above the highest passed on never reaches the user."""
    client, server = pair
    await _device_login(client, server)
    await server.send(_push(1), _push(2), _push(2), _push(1), _push(3))
    assert await _texts(client, 3) == ["m1", "m2", "m3"]
    assert client.duplicates_dropped == 2
    await server.send(_push(3), _push(4))
    assert await _texts(client, 1) == ["m4"]
    assert client.duplicates_dropped == 3
    acks = await _acks_until_ping(client, server)
    assert acks[-1] == 4
    assert acks == sorted(set(acks))
    with pytest.raises(TimeoutError):
        await client.next_message(seconds(0.05))


async def test_group_pushes_share_the_users_cursor(pair: Pair) -> None:
    """One-to-one and group pushes are positions in the same log."""
    client, server = pair
    await _device_login(client, server)
    group = {"msgid": 10, "id": 3, "name": "c", "groupid": 9, "msg": "g2", "mid": "x", "cursor": 2}
    await server.send(_push(1), group, {**group, "msg": "again"})
    assert await _texts(client, 2) == ["m1", "g2"]
    assert client.duplicates_dropped == 1
    assert await _acks_until_ping(client, server) == [2]


async def test_without_auto_ack_only_explicit_acks_are_sent(pair: Pair) -> None:
    """auto_ack=False: nothing is acknowledged until ack(); ack() is cumulative."""
    client, server = pair
    await _device_login(client, server, cursor=10, auto_ack=False)
    await server.send(_push(11), _push(12), _push(13))
    assert await _texts(client, 3) == ["m11", "m12", "m13"]
    assert await _acks_until_ping(client, server) == []
    await client.ack(12)
    await client.ack(11)  # already covered: nothing sent
    await client.ack()
    await client.ack()
    assert await _acks_until_ping(client, server) == [12, 13]
    assert client.acked_cursor == 13
    with pytest.raises(ValueError, match="not received"):
        await client.ack(14)


async def test_ack_needs_a_device_session(pair: Pair) -> None:
    """ack() outside a device session is a programming error, not a frame."""
    client, server = pair
    with pytest.raises(RuntimeError, match="device"):
        await client.ack(1)
    task = asyncio.create_task(client.login(1, "pw", device="phone-1"))
    await server.receive()
    # A server without acknowledged delivery answers without cursor.
    await server.send({"msgid": 2, "errno": 0, "id": 1, "name": "a"}, _push(None, "old"))
    await _within(task)
    assert not client.acking
    assert await _texts(client, 1) == ["old"]
    with pytest.raises(RuntimeError, match="device"):
        await client.ack()
    assert await _acks_until_ping(client, server) == []


async def test_failed_login_starts_no_session(pair: Pair) -> None:
    """A refused device login leaves the client as it was."""
    client, server = pair
    task = asyncio.create_task(client.login(1, "bad", device="phone-1", check=False))
    await server.receive()
    await server.send({"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})
    assert (await _within(task)).errno == 1
    assert not client.acking
    assert client.device is None


async def test_logout_ends_the_session_and_relogin_resumes_after_the_cursor(
    pair: Pair,
) -> None:
    """After logout nothing is acked; logging in again as the same device sends after=cursor."""
    client, server = pair
    await _device_login(client, server)
    await server.send(_push(1), _push(2))
    assert await _texts(client, 2) == ["m1", "m2"]
    assert await _acks_until_ping(client, server) == [2]
    logout = asyncio.create_task(client.logout())
    assert (await server.receive())["msgid"] == 3
    await server.send({"msgid": 103, "errno": 0})
    await _within(logout)
    assert not client.acking
    assert client.cursor == 2
    request = await _device_login(client, server, cursor=2)
    assert request["after"] == 2
    assert client.acking


async def test_login_below_what_was_passed_on_acks_it_again(pair: Pair) -> None:
    """A resume point below the highest cursor passed on: the rest is acked at once."""
    client, server = pair
    await _device_login(client, server)
    await server.send(_push(1), _push(2), _push(3))
    assert await _texts(client, 3) == ["m1", "m2", "m3"]
    assert await _acks_until_ping(client, server) == [3]
    logout = asyncio.create_task(client.logout())
    await server.receive()
    await server.send({"msgid": 103, "errno": 0})
    await _within(logout)
    # An explicit after below our cursor; the server resumes there and repeats 2..3.
    await _device_login(client, server, cursor=1, after=1, then=(_push(2), _push(3), _push(4)))
    assert await _texts(client, 1) == ["m4"]
    assert client.duplicates_dropped == 2
    assert await _acks_until_ping(client, server) == [4]


async def test_another_device_on_the_connection_starts_afresh(pair: Pair) -> None:
    """The cursor belongs to a device: a session of another device does not inherit it."""
    client, server = pair
    await _device_login(client, server, cursor=5)
    logout = asyncio.create_task(client.logout())
    await server.receive()
    await server.send({"msgid": 103, "errno": 0})
    await _within(logout)
    task = asyncio.create_task(client.login(1, "pw", device="laptop"))
    request = await server.receive()
    assert "after" not in request
    await server.send({"msgid": 2, "errno": 0, "id": 1, "cursor": 1}, _push(2))
    await _within(task)
    assert await _texts(client, 1) == ["m2"]
    assert (client.device, client.cursor) == ("laptop", 2)


async def test_cursor_survives_the_connection(pair: Pair) -> None:
    """A lost connection keeps cursor readable, for the next connection's after=."""
    client, server = pair
    await _device_login(client, server)
    await server.send(_push(1), _push(2))
    assert await _texts(client, 2) == ["m1", "m2"]
    await server.close()
    assert [message async for message in client.messages()] == []
    assert client.closed
    assert not client.acking
    assert client.cursor == 2
    with pytest.raises(ConnectionError):
        await client.ack()


async def test_classic_framing_passes_every_part_of_a_split_push(peer: CannedPeer) -> None:
    """Parts of a push split for a classic frame share cursor and mid: all are passed on."""
    async with await ChatClient.connect(peer.host, peer.port, classic=True) as client:
        server = await peer.accept()
        task = asyncio.create_task(client.login(1, "pw", device="phone-1"))
        await server.receive()
        answer: dict[str, object] = {"msgid": 2, "errno": 0, "id": 1, "cursor": 0}
        parts = [_push(1, "part one", mid="m"), _push(1, "part two", mid="m")]
        await server.send(answer, *parts, _push(1, "again", mid="other"), terminator=b"\x00")
        await _within(task)
        assert await _texts(client, 2) == ["part one", "part two"]
        assert client.duplicates_dropped == 1


async def test_the_reader_creates_no_task_per_push(pair: Pair) -> None:
    """A thousand pushes are read, de-duplicated and acknowledged without a task each."""
    client, server = pair
    await _device_login(client, server)
    loop = asyncio.get_running_loop()
    created: list[object] = []
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created.append(coro)
        if default is not None:
            return default(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        await server.send(*(_push(cursor) for cursor in range(1, 1001)))
        await server.send(*(_push(cursor) for cursor in range(500, 1001)))
        texts = await _texts(client, 1000)
        assert texts == [f"m{cursor}" for cursor in range(1, 1001)]
        with pytest.raises(TimeoutError):
            await client.next_message(seconds(0.05))
    finally:
        loop.set_task_factory(default)
    assert created == []
    assert client.duplicates_dropped == 501
    acks = await _acks_until_ping(client, server)
    assert acks[-1] == 1000
    assert acks == sorted(set(acks))


async def test_chat_acked_sends_cid_and_returns_seq_and_time(pair: Pair) -> None:
    """chat_acked(cid=) puts the cid on the wire and returns mid, seq and time."""
    client, server = pair
    task = asyncio.create_task(client.chat_acked(2, "hi", cid="c-1"))
    request = await server.receive()
    ref = request["ref"]
    assert isinstance(ref, int)
    assert request == {"msgid": 6, "toid": 2, "msg": "hi", "ref": ref, "cid": "c-1"}
    answer = {"msgid": 106, "errno": 0, "mid": "m", "seq": 4, "time": "t", "ref": ref}
    await server.send({**answer, "cid": "c-1"})
    ack = await _within(task)
    assert ack == OneChatAck(errno=0, mid="m", seq=4, time="t", ref=ref, cid="c-1")


async def test_group_chat_acked_sends_cid(pair: Pair) -> None:
    """group_chat_acked(cid=) likewise; the fire-and-forget forms carry cid too."""
    client, server = pair
    task = asyncio.create_task(client.group_chat_acked(5, "all", ref=9, cid="g-1"))
    assert await server.receive() == {
        "msgid": 10,
        "groupid": 5,
        "msg": "all",
        "ref": 9,
        "cid": "g-1",
    }
    await server.send({"msgid": 110, "errno": 0, "mid": "m", "seq": 1, "ref": 9, "cid": "g-1"})
    assert await _within(task) == GroupChatAck(errno=0, mid="m", seq=1, ref=9, cid="g-1")
    await client.chat(2, "x", cid="c-2")
    assert await server.receive() == {"msgid": 6, "toid": 2, "msg": "x", "cid": "c-2"}
    await client.group_chat(5, "y", cid="g-2")
    assert await server.receive() == {"msgid": 10, "groupid": 5, "msg": "y", "cid": "g-2"}


async def test_login_answer_is_returned_whole(pair: Pair) -> None:
    """The LoginAck of a device login comes back with its cursor."""
    client, server = pair
    task = asyncio.create_task(client.login(1, "pw", device="d"))
    await server.receive()
    await server.send({"msgid": 2, "errno": 0, "id": 1, "name": "a", "cursor": 0})
    assert await _within(task) == LoginAck(errno=0, id=1, name="a", cursor=0)


async def test_local_address_is_this_ends_socket(pair: Pair) -> None:
    """local_address names the client's side of the connection (for balancer logs)."""
    client, server = pair
    peer_of_server = server.writer.get_extra_info("peername")
    assert client.local_address == (peer_of_server[0], peer_of_server[1])
