"""A classic ChatServer client against a real ``clusterchat node`` process (issue: the core)."""

import json
import signal
import socket
import threading

import pytest

from tests.support.classic import PASSWORD, ClassicClient, login, register
from tests.support.node import NodeFactory
from tests.support.timing import seconds

pytestmark = pytest.mark.integration


def test_classic_session_end_to_end(node_factory: NodeFactory) -> None:
    """Register, log in, befriend, group up and chat with the classic client's exact bytes."""
    node = node_factory()
    zhang, li = register(node, "张三", "li si")
    a, login_a = login(node, zhang)
    assert login_a == {"errno": 0, "id": zhang, "msgid": 2, "name": "张三"}

    # A friend request waits for li's consent (li is offline: it is in li's login).
    assert a.request({"msgid": 7, "id": zhang, "friendid": li}) == {
        "errno": 0,
        "friendid": li,
        "msgid": 107,
        "pending": True,
    }
    created = a.request({"msgid": 8, "id": zhang, "groupname": "茶馆", "groupdesc": "喝茶"})
    assert (created["errno"], created["msgid"]) == (0, 108)
    group_id = created["groupid"]

    # li is offline: both messages are stored, then come in the login answer, in order.
    a.send({"msgid": 6, "id": zhang, "name": "张三", "toid": li, "msg": "你好", "time": "x"})
    a.send({"msgid": 6, "id": zhang, "name": "张三", "toid": li, "msg": "second", "time": "x"})
    assert a.request({"msgid": 120, "ref": 7}) == {"msgid": 121, "ref": 7}
    b = ClassicClient(node.host, node.port)
    b.send({"msgid": 1, "id": li, "password": PASSWORD})
    raw = b.frame()
    login_b = json.loads(raw)
    # Byte-for-byte classic shape: compact, keys sorted, raw UTF-8.
    assert (
        raw
        == json.dumps(login_b, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    )
    offline = [json.loads(text) for text in login_b["offlinemsg"]]
    assert [m["msg"] for m in offline] == ["你好", "second"]
    assert all(m["id"] == zhang and m["name"] == "张三" and m["msgid"] == 6 for m in offline)
    assert "friends" not in login_b  # not before li consents
    assert [json.loads(text) for text in login_b["requests"]] == [{"id": zhang, "name": "张三"}]
    assert "groups" not in login_b
    # li asks back (all a classic client can do): they are friends, presence shows.
    assert b.request({"msgid": 7, "id": li, "friendid": zhang}) == {
        "errno": 0,
        "friendid": zhang,
        "msgid": 107,
    }
    check = ClassicClient(node.host, node.port)
    again = check.request({"msgid": 1, "id": li, "password": PASSWORD})
    friends = [json.loads(text) for text in again["friends"]]
    assert friends == [{"id": zhang, "name": "张三", "state": "online"}]
    assert "requests" not in again
    check.close()

    assert b.request({"msgid": 9, "id": li, "groupid": group_id})["errno"] == 0
    # Live chat both ways, with the real sender whatever the client claims.
    b.send({"msgid": 6, "id": li, "name": "liar", "toid": zhang, "msg": "hi back", "time": "t"})
    pushed = a.receive()
    assert (pushed["msgid"], pushed["id"], pushed["name"], pushed["msg"]) == (
        6,
        li,
        "li si",
        "hi back",
    )
    b.send(
        {"msgid": 10, "id": li, "name": "li si", "groupid": group_id, "msg": "群聊", "time": "t"}
    )
    group_push = a.receive()
    assert (group_push["msgid"], group_push["groupid"], group_push["msg"]) == (10, group_id, "群聊")

    # Logout is acknowledged; a second login shows the group with both members.
    assert b.request({"msgid": 3, "id": li}) == {"errno": 0, "msgid": 103}
    relogin = b.request({"msgid": 1, "id": li, "password": PASSWORD})
    assert "offlinemsg" not in relogin
    (group_text,) = relogin["groups"]
    group = json.loads(group_text)
    assert (group["id"], group["groupname"], group["groupdesc"]) == (group_id, "茶馆", "喝茶")
    users = [json.loads(text) for text in group["users"]]
    assert [(u["id"], u["role"], u["state"]) for u in users] == [
        (zhang, "creator", "online"),
        (li, "normal", "online"),
    ]
    a.close()
    b.close()


def test_large_login_answer_is_split_for_the_classic_buffer(node_factory: NodeFactory) -> None:
    """60 offline messages do not fit 1024 bytes: the answer carries some, pushes carry the rest."""
    node = node_factory()
    sender, reader = register(node, "sender", "reader")
    a, _ = login(node, sender)
    texts = [f"message number {i:03d} " + "x" * 40 for i in range(60)]
    for text in texts:
        a.send({"msgid": 6, "toid": reader, "msg": text})
    a.send({"msgid": 120, "ref": 1})  # the pong proves everything before it was handled
    assert a.receive() == {"msgid": 121, "ref": 1}
    b = ClassicClient(node.host, node.port)
    b.send({"msgid": 1, "id": reader, "password": PASSWORD})
    answer = b.receive()
    got = [json.loads(t)["msg"] for t in answer.get("offlinemsg", [])]
    assert 0 < len(got) < 60
    while len(got) < 60:
        push = b.receive()
        assert push["msgid"] == 6
        got.append(push["msg"])
    assert got == texts
    a.close()
    b.close()


def test_bad_input_is_answered_and_others_are_unaffected(node_factory: NodeFactory) -> None:
    """Garbage, bad fields and oversized frames get errors; other clients keep chatting."""
    node = node_factory(extra_args=["--max-frame", "2048"])
    alice, bob = register(node, "alice", "bob")
    a, _ = login(node, alice)
    b, _ = login(node, bob)

    bad = ClassicClient(node.host, node.port)
    bad.send_raw(b"{not json}\0")
    assert bad.receive()["errno"] == 10
    bad.send_raw(b"[1,2,3]\0")
    assert bad.receive()["errno"] == 11
    bad.send_raw(b'{"msgid":999}\0')
    assert bad.receive() == {"errmsg": "unknown msgid 999", "errno": 12, "msgid": 100, "req": 999}
    bad.send_raw(b'{"msgid":1,"id":"one","password":"x"}\0')
    answer = bad.receive()
    assert (answer["msgid"], answer["errno"]) == (2, 13)
    bad.send_raw(b'{"msgid":6,"toid":1,"msg":"hi"}\0')
    assert bad.receive()["errno"] == 20  # not logged in
    bad.send_raw(b'{"msgid":6,"toid":1,"msg":"' + b"y" * 4096 + b'"}\0')
    assert bad.receive()["errno"] == 14
    assert bad.closed_by_server()
    bad.close()

    # Binary garbage desynchronises the stream: every answer is an error, and
    # once the unterminated junk passes the frame limit the connection closes.
    garbage = ClassicClient(node.host, node.port)
    garbage.send_raw(bytes(range(256)) * 3 + b"\0")
    assert garbage.receive()["msgid"] == 100
    garbage.send_raw(b"\xff" * 4096)
    while True:
        try:
            answer = garbage.receive()
        except ConnectionError:
            break
        assert answer["msgid"] == 100
        assert answer["errno"] in {10, 11, 14}
    garbage.close()

    half = socket.create_connection((node.host, node.port))
    half.sendall(b'{"msgid":1,"id":')  # and vanish mid-frame
    half.close()
    silent = socket.create_connection((node.host, node.port))  # connects and says nothing

    a.send({"msgid": 6, "toid": bob, "msg": "still here"})
    assert b.receive()["msg"] == "still here"
    silent.close()
    a.close()
    b.close()


def test_silent_connection_is_closed_after_the_login_timeout(node_factory: NodeFactory) -> None:
    """A client that connects and never logs in is told why and disconnected."""
    node = node_factory(env={"CLUSTERCHAT_LOGIN_TIMEOUT": "0.5"})
    silent = ClassicClient(node.host, node.port)
    silent.send({"msgid": 120})  # a ping is not a login
    assert silent.receive() == {"msgid": 121}
    answer = silent.receive()
    assert (answer["msgid"], answer["errno"]) == (100, 20)
    assert silent.closed_by_server()
    silent.close()


def test_spoofed_sender_is_refused(node_factory: NodeFactory) -> None:
    """A chat whose id names another user is refused and never delivered."""
    node = node_factory()
    alice, bob = register(node, "alice", "bob")
    a, _ = login(node, alice)
    b, _ = login(node, bob)
    refused = a.request({"msgid": 6, "id": bob, "toid": bob, "msg": "I am bob"})
    assert (refused["msgid"], refused["errno"]) == (106, 21)
    a.send({"msgid": 6, "id": alice, "toid": bob, "msg": "honest"})
    assert b.receive()["msg"] == "honest"
    a.close()
    b.close()


def test_sigterm_stops_cleanly_and_keeps_stored_messages(node_factory: NodeFactory) -> None:
    """SIGTERM exits 0; messages stored for an offline user survive a restart."""
    node = node_factory()
    alice, bob = register(node, "alice", "bob")
    a, _ = login(node, alice)
    a.send({"msgid": 6, "toid": bob, "msg": "before restart"})
    a.send({"msgid": 120})
    assert a.receive()["msgid"] == 121
    assert node.stop(signal.SIGTERM) == 0
    assert a.closed_by_server()
    a.close()

    restarted = node_factory()  # same test database
    b, answer = login(restarted, bob)
    assert [json.loads(t)["msg"] for t in answer["offlinemsg"]] == ["before restart"]
    b.close()


def test_two_hundred_parallel_logins(node_factory: NodeFactory) -> None:
    """200 clients logging in at once all succeed (the original crashed here)."""
    node = node_factory()
    ids = register(node, *(f"user{i}" for i in range(200)))
    results: list[int] = []
    lock = threading.Lock()

    def login(user_id: int) -> None:
        # From four addresses: one address may hold 100 connections at once.
        source = f"127.0.2.{1 + user_id % 4}"
        client = ClassicClient.over(
            socket.create_connection((node.host, node.port), seconds(10), (source, 0))
        )
        try:
            answer = client.request({"msgid": 1, "id": user_id, "password": PASSWORD})
        finally:
            client.close()
        with lock:
            results.append(answer["errno"])

    threads = [threading.Thread(target=login, args=(uid,)) for uid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds(60))
    assert results == [0] * 200
