"""ChatClient against a scripted peer: framing, answer matching, events, connection loss."""

import asyncio
import gc
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from clusterchat.client import ChatClient, ChatClientError
from clusterchat.protocol import (
    AddFriendAck,
    Error,
    GroupChat,
    GroupChatAck,
    LoginAck,
    OneChat,
    OneChatAck,
    RegAck,
)
from tests.support.timing import seconds
from tests.unit.client.peer import CannedPeer, PeerConnection

Pair = tuple[ChatClient, PeerConnection]


T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(seconds(5)):
        return await awaitable


async def test_register_sends_the_request_and_returns_the_ack(pair: Pair) -> None:
    """register() writes a REG frame and returns the RegAck that answers it."""
    client, server = pair
    task = asyncio.create_task(client.register("alice", "pw"))
    assert await server.receive() == {"msgid": 4, "name": "alice", "password": "pw"}
    await server.send({"msgid": 5, "errno": 0, "id": 7})
    ack = await _within(task)
    assert ack == RegAck(errno=0, id=7)


async def test_frames_end_with_a_newline_by_default(pair: Pair) -> None:
    """A default client separates its frames with newlines."""
    client, server = pair
    await client.chat(2, "hi")
    expected = b'{"msg":"hi","msgid":6,"toid":2}\n'
    assert await server.receive_bytes(len(expected)) == expected


async def test_classic_client_sends_and_reads_nul_terminated_frames(peer: CannedPeer) -> None:
    """classic=True ends frames with NUL and reads NUL-terminated answers."""
    async with await ChatClient.connect(peer.host, peer.port, classic=True) as client:
        server = await peer.accept()
        task = asyncio.create_task(client.login(1, "pw"))
        expected = b'{"id":1,"msgid":1,"password":"pw"}\x00'
        assert await server.receive_bytes(len(expected)) == expected
        await server.send({"msgid": 2, "errno": 0, "id": 1, "name": "a"}, terminator=b"\x00")
        ack = await _within(task)
        assert ack == LoginAck(errno=0, id=1, name="a")


async def test_answers_resolve_the_oldest_request_of_their_type(pair: Pair) -> None:
    """Answers of different types arriving out of order still reach the right callers."""
    client, server = pair
    first = asyncio.create_task(client.register("a", "pw"))
    login = asyncio.create_task(client.login(1, "pw", check=False))
    second = asyncio.create_task(client.register("b", "pw"))
    for _ in range(3):
        await server.receive()
    # Two answers in one write, a third split over two writes.
    await server.send({"msgid": 2, "errno": 1, "errmsg": "bad"}, {"msgid": 5, "errno": 0, "id": 1})
    await server.send(b'{"msgid":5,"err')
    await server.send(b'no":0,"id":2}\n')
    assert await _within(first) == RegAck(errno=0, id=1)
    assert await _within(second) == RegAck(errno=0, id=2)
    assert await _within(login) == LoginAck(errno=1, errmsg="bad")


async def test_refusal_raises_by_default(pair: Pair) -> None:
    """A nonzero errno raises ChatClientError carrying errno and errmsg."""
    client, server = pair
    task = asyncio.create_task(client.login(1, "bad"))
    await server.receive()
    await server.send({"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})
    with pytest.raises(ChatClientError) as info:
        await _within(task)
    assert (info.value.errno, info.value.errmsg) == (1, "id or password is invalid!")


async def test_refusal_without_errmsg_is_explained(pair: Pair) -> None:
    """A refusal that carries no errmsg still raises with a readable explanation."""
    client, server = pair
    task = asyncio.create_task(client.register("taken", "pw"))
    await server.receive()
    await server.send({"msgid": 5, "errno": 1})
    with pytest.raises(ChatClientError, match="refused") as info:
        await _within(task)
    assert info.value.errno == 1


async def test_error_resolves_the_request_with_its_msgid(pair: Pair) -> None:
    """An Error whose req names a waiting request's msgid becomes that request's answer."""
    client, server = pair
    register = asyncio.create_task(client.register("a", "pw"))
    add = asyncio.create_task(client.add_friend(9, check=False))
    await server.receive()
    await server.receive()
    await server.send({"msgid": 100, "errno": 20, "errmsg": "log in first", "req": 7})
    assert await _within(add) == AddFriendAck(errno=20, errmsg="log in first")
    assert not register.done()
    await server.send({"msgid": 5, "errno": 0, "id": 3})
    assert await _within(register) == RegAck(errno=0, id=3)


async def test_error_raises_for_a_checked_request(pair: Pair) -> None:
    """An Error answering a checked request raises ChatClientError."""
    client, server = pair
    task = asyncio.create_task(client.create_group("g", "d"))
    await server.receive()
    await server.send({"msgid": 100, "errno": 13, "errmsg": "groupname too long", "req": 8})
    with pytest.raises(ChatClientError, match="groupname too long"):
        await _within(task)


async def test_unmatched_error_becomes_an_event(pair: Pair) -> None:
    """An Error that no waiting request matches is delivered as an event."""
    client, server = pair
    await client.send_raw(b"{oops}\n")
    await server.receive_frame()
    await server.send({"msgid": 100, "errno": 10, "errmsg": "malformed JSON"})
    assert await client.next_message(seconds(5)) == Error(errno=10, errmsg="malformed JSON")


async def test_cancelled_request_still_consumes_its_answer(pair: Pair) -> None:
    """A request whose caller gave up does not shift the answers of later requests."""
    client, server = pair
    abandoned = asyncio.create_task(client.register("a", "pw"))
    await server.receive()
    abandoned.cancel()
    later = asyncio.create_task(client.register("b", "pw"))
    await server.receive()
    await server.send({"msgid": 5, "errno": 0, "id": 1}, {"msgid": 5, "errno": 0, "id": 2})
    assert await _within(later) == RegAck(errno=0, id=2)
    assert abandoned.cancelled()


async def test_pushes_are_delivered_in_order(pair: Pair) -> None:
    """Chat pushes reach messages() in arrival order, between answers."""
    client, server = pair
    ping = asyncio.create_task(client.ping())
    await server.receive()
    push = {"msgid": 6, "id": 2, "name": "b", "toid": 1, "msg": "hi", "time": "t", "mid": "m1"}
    group = {"msgid": 10, "id": 2, "name": "b", "groupid": 5, "msg": "all", "mid": "m2"}
    await server.send(push, {"msgid": 121, "ref": 1}, group)
    await _within(ping)
    received = []
    async for message in client.messages():
        received.append(message)
        if len(received) == 2:
            break
    assert received == [
        OneChat(id=2, name="b", toid=1, msg="hi", time="t", mid="m1"),
        GroupChat(id=2, name="b", groupid=5, msg="all", mid="m2"),
    ]


async def test_fire_and_forget_refusal_becomes_an_event(pair: Pair) -> None:
    """chat() waits for nothing; a refusal without ref arrives as an event."""
    client, server = pair
    await client.chat(9, "hello")
    assert await server.receive() == {"msgid": 6, "toid": 9, "msg": "hello"}
    await server.send({"msgid": 106, "errno": 30, "errmsg": "no such user"})
    assert await client.next_message(seconds(5)) == OneChatAck(errno=30, errmsg="no such user")


async def test_acked_chats_are_matched_by_ref(pair: Pair) -> None:
    """chat_acked() answers are matched by ref, whatever order they come in."""
    client, server = pair
    first = asyncio.create_task(client.chat_acked(2, "one"))
    second = asyncio.create_task(client.chat_acked(2, "two", ref=50))
    ref1 = (await server.receive())["ref"]
    assert isinstance(ref1, int)
    assert (await server.receive())["ref"] == 50
    await server.send({"msgid": 106, "errno": 0, "mid": "b", "ref": 50})
    await server.send({"msgid": 106, "errno": 0, "mid": "a", "ref": ref1})
    assert await _within(first) == OneChatAck(errno=0, mid="a", ref=ref1)
    assert await _within(second) == OneChatAck(errno=0, mid="b", ref=50)


async def test_acked_group_chat_refusal_raises(pair: Pair) -> None:
    """group_chat_acked() raises on a refusal that echoes its ref."""
    client, server = pair
    task = asyncio.create_task(client.group_chat_acked(5, "hi"))
    ref = (await server.receive())["ref"]
    await server.send({"msgid": 110, "errno": 36, "errmsg": "not a member", "ref": ref})
    with pytest.raises(ChatClientError, match="not a member"):
        await _within(task)


async def test_error_for_chat_resolves_the_oldest_acked_chat(pair: Pair) -> None:
    """An Error with req 10 answers the oldest waiting acked group chat."""
    client, server = pair
    task = asyncio.create_task(client.group_chat_acked(5, "x", check=False))
    await server.receive()
    await server.send({"msgid": 100, "errno": 13, "errmsg": "msg too long", "req": 10})
    assert await _within(task) == GroupChatAck(errno=13, errmsg="msg too long")


async def test_ping_round_trip(pair: Pair) -> None:
    """ping() sends a ref and returns the Pong."""
    client, server = pair
    task = asyncio.create_task(client.ping())
    request = await server.receive()
    assert request["msgid"] == 120
    await server.send({"msgid": 121, "ref": request["ref"]})
    pong = await _within(task)
    assert pong.ref == request["ref"]


async def test_unknown_frames_are_skipped(pair: Pair) -> None:
    """Frames with unknown msgids are ignored; later frames still arrive."""
    client, server = pair
    await server.send({"msgid": 999, "whatever": 1}, {"msgid": 6, "toid": 1, "msg": "after"})
    assert await client.next_message(seconds(5)) == OneChat(toid=1, msg="after")


async def test_connection_loss_fails_waiters_and_ends_messages(pair: Pair) -> None:
    """When the server goes away, waiting requests fail and messages() ends."""
    client, server = pair
    task = asyncio.create_task(client.login(1, "pw"))
    await server.receive()
    await server.send({"msgid": 6, "toid": 1, "msg": "last words"})
    await server.close()
    with pytest.raises(ConnectionError):
        await _within(task)
    received = [message async for message in client.messages()]
    assert received == [OneChat(toid=1, msg="last words")]
    assert client.closed
    with pytest.raises(ConnectionError):
        await client.next_message(seconds(5))
    with pytest.raises(ConnectionError):
        await client.ping()
    with pytest.raises(ConnectionError):
        await client.chat(1, "x")


async def test_close_fails_waiters(pair: Pair) -> None:
    """close() fails the requests still waiting and ends the message iterator."""
    client, server = pair
    task = asyncio.create_task(client.add_group(3))
    await server.receive()
    await client.close()
    with pytest.raises(ConnectionError):
        await _within(task)
    assert [message async for message in client.messages()] == []


async def test_unreadable_server_stream_closes_the_client(pair: Pair) -> None:
    """A server frame nested beyond the limit ends the connection."""
    client, server = pair
    task = asyncio.create_task(client.logout())
    await server.receive()
    await server.send(b"[" * 100)
    with pytest.raises(ConnectionError, match="unreadable"):
        await _within(task)


async def test_next_message_times_out(pair: Pair) -> None:
    """next_message() raises TimeoutError when nothing arrives in time."""
    client, _server = pair
    with pytest.raises(TimeoutError):
        await client.next_message(seconds(0.05))


async def test_duplicate_waiting_ref_is_refused(pair: Pair) -> None:
    """Two acked chats may not wait on the same ref at once."""
    client, server = pair
    task = asyncio.create_task(client.chat_acked(2, "one", ref=7))
    await server.receive()
    with pytest.raises(ValueError, match="ref 7"):
        await client.chat_acked(2, "two", ref=7)
    await server.send({"msgid": 106, "errno": 0, "mid": "a", "ref": 7})
    assert await _within(task) == OneChatAck(errno=0, mid="a", ref=7)


@pytest.mark.parametrize("acked_chat", [False, True])
async def test_failed_send_leaves_no_unretrieved_failure(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, acked_chat: bool
) -> None:
    """A request whose write fails raises, and the connection's end reports nothing more."""
    client, server = pair
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def broken_drain() -> None:
        raise ConnectionError("connection lost: broken pipe")

    monkeypatch.setattr(client, "_drain", broken_drain)
    try:
        request = client.chat_acked(2, "hi") if acked_chat else client.ping()
        with pytest.raises(ConnectionError, match="broken pipe"):
            await request
        await server.close()
        assert [message async for message in client.messages()] == []
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_listener_hears_what_was_queued_then_each_event_then_the_end(pair: Pair) -> None:
    """listen(): earlier events first, then each push and unsolicited answer as read, None last."""
    client, server = pair
    await server.send({"msgid": 6, "id": 2, "name": "b", "toid": 1, "msg": "early", "mid": "m1"})
    assert await client.next_message(seconds(5)) == OneChat(
        id=2, name="b", toid=1, msg="early", mid="m1"
    )
    await server.send({"msgid": 6, "id": 2, "name": "b", "toid": 1, "msg": "queued", "mid": "m2"})
    heard: list[object] = []
    ended = asyncio.Event()

    def listener(message: object) -> None:
        heard.append(message)
        if message is None:
            ended.set()

    ping = asyncio.create_task(client.ping())
    await server.receive()
    await server.send({"msgid": 121, "ref": 1})
    await _within(ping)  # the push sent before the ping's answer is queued by now
    client.listen(listener)
    assert heard == [OneChat(id=2, name="b", toid=1, msg="queued", mid="m2")]
    await server.send(
        {"msgid": 10, "id": 2, "name": "b", "groupid": 5, "msg": "live", "mid": "m3"},
        {"msgid": 106, "errno": 30, "errmsg": "no such user"},
    )
    await server.close()
    await _within(ended.wait())
    assert heard[1:] == [
        GroupChat(id=2, name="b", groupid=5, msg="live", mid="m3"),
        OneChatAck(errno=30, errmsg="no such user"),
        None,
    ]


async def test_a_write_waits_while_the_peer_does_not_read(pair: Pair) -> None:
    """Above the transport's high-water mark a request waits until the peer reads again."""
    client, server = pair
    data = b" " * (16 * 1024 * 1024)
    writing = asyncio.create_task(client.send_raw(data))
    await asyncio.sleep(seconds(0.2))
    assert not writing.done()  # the peer reads nothing: kernel buffers and ours are full
    assert await server.receive_bytes(len(data)) == data
    await _within(writing)


async def test_a_write_waiting_for_a_peer_that_goes_away_fails(pair: Pair) -> None:
    """The connection ends while a write waits for room: the write raises ConnectionError."""
    client, server = pair
    writing = asyncio.create_task(client.send_raw(b" " * (16 * 1024 * 1024)))
    await asyncio.sleep(seconds(0.2))
    assert not writing.done()
    server.writer.transport.abort()
    with pytest.raises(ConnectionError):
        await _within(writing)
    assert client.closed


async def test_a_client_connects_from_the_local_address_it_is_given(peer: CannedPeer) -> None:
    """connect(local_address=) binds the client's end (a load generator spreads over sources)."""
    client = await ChatClient.connect(peer.host, peer.port, local_address=("127.0.0.2", 0))
    try:
        server = await peer.accept()
        assert server.writer.get_extra_info("peername")[0] == "127.0.0.2"
        assert client.local_address is not None
        assert client.local_address[0] == "127.0.0.2"
    finally:
        await client.close()
