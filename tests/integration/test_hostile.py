"""Hostile input against a real ``clusterchat node`` process (issue: hostile clients).

Each test reproduces a finding of the issue on the node as users run it: the
answer a hostile request gets, that the node keeps serving everyone else, and
that its log stays small (one line per kind of problem, never one per request).
"""

import json
import socket
import time
from typing import Any

import pytest

from tests.support.classic import PASSWORD, ClassicClient, login, register
from tests.support.node import NodeFactory, NodeHandle

pytestmark = pytest.mark.integration

#: The shipped allowance (the other tests' nodes register without back-off).
DEFAULT_REGISTRATIONS = {"CLUSTERCHAT_REGISTRATIONS_PER_ADDRESS": "10"}

#: Past every database's integer (SQLite's is 2**63 - 1): reached the store and
#: raised OverflowError there, a traceback per request.
HUGE = 2**63


def _log_text(node: NodeHandle) -> str:
    return node.child.log_path.read_text(errors="replace")


def test_out_of_range_ids_are_refused_with_errno_13_before_any_io(
    node_factory: NodeFactory,
) -> None:
    node = node_factory()
    (alice,) = register(node, "alice")

    stranger = ClassicClient(node.host, node.port)
    for bad in (HUGE, 2**31, 0, -1):
        answer = stranger.request({"msgid": 1, "id": bad, "password": PASSWORD})
        assert (answer["msgid"], answer["errno"]) == (2, 13), answer
        assert "id" in answer["errmsg"]
    # The same connection still logs in normally.
    assert stranger.request({"msgid": 1, "id": alice, "password": PASSWORD})["errno"] == 0
    stranger.close()

    client, _ = login(node, alice)
    refused: list[tuple[dict[str, Any], int]] = [
        ({"msgid": 6, "id": alice, "toid": HUGE, "msg": "hi", "ref": 1}, 106),
        ({"msgid": 7, "id": alice, "friendid": HUGE}, 107),
        ({"msgid": 9, "id": alice, "groupid": HUGE}, 109),
        ({"msgid": 10, "id": alice, "groupid": HUGE, "msg": "hi"}, 110),
        ({"msgid": 7, "id": HUGE, "friendid": alice}, 107),
        ({"msgid": 120, "ref": 2**64}, 100),
    ]
    for request, answer_type in refused:
        answer = client.request(request)
        assert (answer["msgid"], answer["errno"]) == (answer_type, 13), (request, answer)
    assert client.request({"msgid": 120, "ref": 5}) == {"msgid": 121, "ref": 5}
    client.close()

    text = _log_text(node)
    assert "Traceback" not in text
    assert "OverflowError" not in text


def test_a_flood_of_bad_ids_writes_no_log(node_factory: NodeFactory) -> None:
    """One unauthenticated connection wrote 4.28 MB of tracebacks in 2.6 s on main."""
    node = node_factory(env={"CLUSTERCHAT_MAX_RATE": "1000000", "CLUSTERCHAT_MAX_BURST": "1000000"})
    before = len(_log_text(node))
    client = ClassicClient(node.host, node.port)
    for _ in range(500):
        client.send({"msgid": 1, "id": HUGE, "password": PASSWORD})
    for _ in range(500):
        assert client.receive()["errno"] == 13
    client.close()
    written = len(_log_text(node)) - before
    assert written < 2_000, f"{written} bytes of log for 500 bad logins"


def test_taken_name_answers_the_classic_errno_1(node_factory: NodeFactory) -> None:
    """PROTOCOL-CLASSIC.md: a refused registration is errno 1 (an errmsg may say why)."""
    node = node_factory()
    register(node, "bob")
    client = ClassicClient(node.host, node.port)
    answer = client.request({"msgid": 4, "name": "bob", "password": PASSWORD})
    assert (answer["msgid"], answer["errno"]) == (5, 1), answer
    assert "taken" in answer["errmsg"]
    client.close()


def test_garbage_with_a_nul_is_answered_and_the_stream_goes_on(node_factory: NodeFactory) -> None:
    """On main the decoder waited past the NUL for the braces to close: no answer, ever."""
    node = node_factory()
    (carol,) = register(node, "carol")
    client = ClassicClient(node.host, node.port)
    client.send_raw(b"{{{not json\x00\xff\xfe garbage\n")
    first = client.receive()
    assert (first["msgid"], first["errno"]) == (100, 10), first
    # The rest of the garbage gets its answers too; then the connection works.
    client.send({"msgid": 120, "ref": 9})
    while (answer := client.receive())["msgid"] != 121:
        assert answer["errno"] == 10, answer
    assert answer == {"msgid": 121, "ref": 9}
    assert client.request({"msgid": 1, "id": carol, "password": PASSWORD})["errno"] == 0
    client.close()
    assert "Traceback" not in _log_text(node)


def _connect(node: NodeHandle, source: str) -> socket.socket:
    sock = socket.create_connection((node.host, node.port), timeout=10, source_address=(source, 0))
    return sock


def _answer_then_closed(sock: socket.socket) -> dict[str, object]:
    """The one answer a refused connection gets, after which the node closes it."""
    data = b""
    with sock:
        while chunk := sock.recv(4096):
            data += chunk
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer


def test_a_hoarder_on_one_address_cannot_keep_others_out(node_factory: NodeFactory) -> None:
    """On main ~20,000 idle sockets from one client made every new connection fail silently."""
    node = node_factory(extra_args=["--max-per-address", "20", "--max-connections", "30"])
    (dave,) = register(node, "dave")
    hoard = [_connect(node, "127.0.0.2") for _ in range(20)]
    try:
        for _ in range(3):
            refused = _answer_then_closed(_connect(node, "127.0.0.2"))
            assert (refused["msgid"], refused["errno"]) == (100, 17), refused
            assert "too many connections from 127.0.0.2: 20" in str(refused["errmsg"])
        # Another address gets in and chats as usual.
        other = ClassicClient.over(_connect(node, "127.0.0.3"))
        assert other.request({"msgid": 1, "id": dave, "password": PASSWORD})["errno"] == 0
        hoard += [_connect(node, f"127.0.0.{4 + i}") for i in range(9)]  # 30: full
        full = _answer_then_closed(_connect(node, "127.0.0.99"))
        assert (full["msgid"], full["errno"]) == (100, 17), full
        assert "the node is full: 30 connections" in str(full["errmsg"])
        assert other.request({"msgid": 120, "ref": 1}) == {"msgid": 121, "ref": 1}
        other.close()
    finally:
        for sock in hoard:
            sock.close()
    # Refusals are logged once per address and limit, not once per connection.
    assert _log_text(node).count("refused a connection from 127.0.0.2") == 1


def test_a_logged_out_connection_is_reaped_like_one_never_logged_in(
    node_factory: NodeFactory,
) -> None:
    """On main, logging in and out kept a connection forever past the login timeout."""
    node = node_factory(env={"CLUSTERCHAT_LOGIN_TIMEOUT": "1"})
    (erin,) = register(node, "erin")
    client, _ = login(node, erin)
    time.sleep(1.5)  # logged in: the timeout does not apply
    assert client.request({"msgid": 120, "ref": 1}) == {"msgid": 121, "ref": 1}
    assert client.request({"msgid": 3, "id": erin})["errno"] == 0
    client.sock.settimeout(10)
    answer = client.receive()
    assert (answer["errno"], answer["errmsg"]) == (20, "login timeout: disconnected")
    assert client.closed_by_server()
    client.close()


def test_behind_nginx_limits_count_the_client_address_from_the_proxy_header(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(extra_args=["--proxy-protocol", "--max-per-address", "2"])
    (frank,) = register_via_proxy(node, "frank")

    def via(source: str) -> socket.socket:
        sock = socket.create_connection((node.host, node.port), timeout=10)
        sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40000 {node.port}\r\n".encode())
        return sock

    kept = [via("198.51.100.7"), via("198.51.100.7")]
    refused = _answer_then_closed(via("198.51.100.7"))
    assert "too many connections from 198.51.100.7: 2" in str(refused["errmsg"])
    client = ClassicClient.over(via("198.51.100.8"))
    assert client.request({"msgid": 1, "id": frank, "password": PASSWORD})["errno"] == 0
    assert f"user {frank} logged in" in _log_text(node)
    assert "(198.51.100.8:40000)" in _log_text(node)
    # A connection without the header is not taken.
    bare = socket.create_connection((node.host, node.port), timeout=10)
    bare.sendall(b'{"msgid":120,"ref":1}\0')
    assert bare.recv(4096) == b""
    for sock in (*kept, bare):
        sock.close()
    client.close()


def register_via_proxy(node: NodeHandle, name: str) -> list[int]:
    sock = socket.create_connection((node.host, node.port), timeout=10)
    sock.sendall(b"PROXY UNKNOWN\r\n")
    client = ClassicClient.over(sock)
    answer = client.request({"msgid": 4, "name": name, "password": PASSWORD})
    client.close()
    return [int(answer["id"])]


def test_password_guessing_backs_off_then_disconnects(node_factory: NodeFactory) -> None:
    """On main: 200 wrong passwords in a row at 29-52/s, each a full argon2id hash."""
    node = node_factory()
    (grace,) = register(node, "grace")
    guesser = ClassicClient(node.host, node.port)
    for index in range(6):  # five free failures, the sixth starts the wait
        answer = guesser.request({"msgid": 1, "id": grace, "password": f"guess{index}"})
        assert answer["errno"] == 1, answer
    answers = [
        guesser.request({"msgid": 1, "id": grace, "password": password})
        for password in ("guess6", PASSWORD, "guess7")
    ]
    for answer in answers:
        assert (answer["msgid"], answer["errno"]) == (2, 18), answer
        assert answer["retry_after"] >= 1
    assert "disconnected" in answers[-1]["errmsg"]
    assert guesser.closed_by_server()
    guesser.close()
    # Once the wait is over, the right password gets in and ends the streak.
    time.sleep(answers[-1]["retry_after"])
    client, _ = login(node, grace)
    client.close()


def test_failures_from_one_address_back_off_across_accounts(node_factory: NodeFactory) -> None:
    node = node_factory()
    victims = register(node, *(f"victim{i}" for i in range(21)))
    guesser = ClassicClient.over(_connect(node, "127.0.0.5"))
    for victim in victims[:20]:  # one wrong password each: no account's own limit
        assert guesser.request({"msgid": 1, "id": victim, "password": "x"})["errno"] == 1
    answer = guesser.request({"msgid": 1, "id": victims[20], "password": "x"})
    assert answer["errno"] == 1  # the 21st failure starts the address's wait
    answer = guesser.request({"msgid": 1, "id": victims[20], "password": PASSWORD})
    assert (answer["errno"], answer["retry_after"]) == (18, 1), answer
    guesser.close()
    # Another address is not affected.
    other = ClassicClient.over(_connect(node, "127.0.0.6"))
    assert other.request({"msgid": 1, "id": victims[20], "password": PASSWORD})["errno"] == 0
    other.close()


def test_mass_registration_from_one_address_backs_off(node_factory: NodeFactory) -> None:
    """On main: 1,500 accounts in 20 s from one client."""
    node = node_factory(env=DEFAULT_REGISTRATIONS)
    client = ClassicClient.over(_connect(node, "127.0.0.7"))
    for index in range(11):
        answer = client.request({"msgid": 4, "name": f"bulk{index}", "password": PASSWORD})
        assert answer["errno"] == 0, (index, answer)
    answer = client.request({"msgid": 4, "name": "bulk11", "password": PASSWORD})
    assert (answer["msgid"], answer["errno"], answer["retry_after"]) == (5, 18, 1), answer
    client.close()
    other = ClassicClient.over(_connect(node, "127.0.0.8"))
    assert other.request({"msgid": 4, "name": "bulk11", "password": PASSWORD})["errno"] == 0
    other.close()


def test_names_that_lie_are_refused(node_factory: NodeFactory) -> None:
    """On main `alice\\0`, `\\u0430lice` (Cyrillic a) and `bob\\u202e` all registered."""
    node = node_factory()
    register(node, "alice", "bob")
    client = ClassicClient(node.host, node.port)

    def registered(name: str) -> dict[str, Any]:
        return client.request({"msgid": 4, "name": name, "password": PASSWORD})

    for name, why in [
        ("alice\u0000", "control characters are not allowed (U+0000)"),
        ("bob\u202e", "invisible characters are not allowed (U+202E)"),
        ("zero\u200bwidth", "invisible characters are not allowed (U+200B)"),
    ]:
        answer = registered(name)
        assert (answer["msgid"], answer["errno"], answer["errmsg"]) == (5, 13, f"name: {why}")
    for look_alike in ["\u0430lice", "ALICE", "a1ice", "b\u043eb"]:
        answer = registered(look_alike)
        assert (answer["errno"], answer["errmsg"]) == (
            1,
            "this name is already taken, or one that looks like it",
        ), look_alike
    # Width forms are folded: full-width letters register as the plain name.
    answer = registered("\uff43\uff41\uff52\uff4f\uff4c")
    assert answer["errno"] == 0
    carol, login_answer = login(node, int(answer["id"]))
    assert login_answer["name"] == "carol"
    carol.close()
    group = login(node, int(answer["id"]))[0]
    created = group.request({"msgid": 8, "groupname": "team", "groupdesc": ""})
    assert created["errno"] == 0
    taken = group.request({"msgid": 8, "groupname": "TEAM", "groupdesc": ""})
    assert taken["errno"] == 34
    bidi = group.request({"msgid": 8, "groupname": "te\u202eam", "groupdesc": ""})
    assert (bidi["errno"], bidi["errmsg"]) == (
        13,
        "groupname: invisible characters are not allowed (U+202E)",
    )
    group.close()
    client.close()


def test_a_refused_chat_keeps_its_ref_and_its_place(node_factory: NodeFactory) -> None:
    """Found by the fuzz test: refusals at decoding lost their ref and overtook earlier answers."""
    node = node_factory()
    sock = socket.create_connection((node.host, node.port), timeout=10)
    sock.sendall(
        b'{"msgid":1,"id":2147483647,"password":"x"}\n'
        b'{"msgid":6,"toid":1,"msg":"","ref":2}\n'
        b'{"msgid":6,"toid":0,"msg":"a","ref":3}\n'
        b'{"msgid":10,"groupid":1,"msg":"a","ref":4,"cid":""}\n'
        b'{"msgid":120,"ref":5}\n'
    )
    received = b""
    while received.count(b"\n") < 5:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    sock.close()
    answers = [json.loads(line) for line in received.splitlines()]
    assert [(a["msgid"], a.get("errno"), a.get("ref")) for a in answers] == [
        (2, 1, None),
        (106, 13, 2),
        (106, 13, 3),
        (110, 13, 4),
        (121, None, 5),
    ]


def test_an_invite_only_group_keeps_strangers_out(node_factory: NodeFactory) -> None:
    """On main anyone could join any group by id and list its members with their state."""
    node = node_factory()
    owner_id, guest_id, stranger_id = register(node, "owner", "guest", "stranger")
    owner, _ = login(node, owner_id)
    created = owner.request({"msgid": 8, "groupname": "private", "invite_only": True})
    group = created["groupid"]
    stranger, _ = login(node, stranger_id)
    refused = stranger.request({"msgid": 9, "groupid": group})
    assert (refused["msgid"], refused["errno"]) == (109, 38), refused
    assert (
        stranger.request({"msgid": 150, "groupid": group, "userid": stranger_id})["errno"] == 39
    )  # only the creator invites
    guest, _ = login(node, guest_id)
    assert owner.request({"msgid": 150, "groupid": group, "userid": guest_id}) == {
        "errno": 0,
        "groupid": group,
        "msgid": 151,
        "userid": guest_id,
    }
    assert guest.receive() == {
        "groupid": group,
        "groupname": "private",
        "id": owner_id,
        "msgid": 152,
        "name": "owner",
    }
    assert guest.request({"msgid": 9, "groupid": group})["errno"] == 0
    # The stranger's login shows no trace of the group; the guest's lists both members.
    again, answer = login(node, stranger_id)
    assert "groups" not in answer
    member, member_answer = login(node, guest_id)
    (text,) = member_answer["groups"]
    assert sorted(json.loads(u)["id"] for u in json.loads(text)["users"]) == [owner_id, guest_id]
    for client in (owner, stranger, guest, again, member):
        client.close()
