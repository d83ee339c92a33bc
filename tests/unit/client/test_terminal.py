"""The terminal client's formatting and command flow, driven by scripted input."""

import asyncio
from collections import deque

import pytest

from clusterchat.client import ChatClient
from clusterchat.client.terminal import (
    Terminal,
    UsageError,
    format_chat,
    format_event,
    format_login,
    parse_id,
)
from clusterchat.protocol import (
    Error,
    FriendEntry,
    FriendRequest,
    GroupChat,
    GroupEntry,
    LoginAck,
    MemberEntry,
    OneChat,
    OneChatAck,
    Pong,
    RequestEntry,
    encode,
    encode_entry,
)
from tests.support.timing import seconds
from tests.unit.client.peer import CannedPeer, PeerConnection


class ScriptedInput:
    """Answers prompts from a list; then raises EOFError (Ctrl-D) or waits forever."""

    def __init__(self, lines: list[str], *, then_wait: bool = False) -> None:
        self.lines = deque(lines)
        self.prompts: list[str] = []
        self.then_wait = then_wait

    async def ask(self, prompt: str, *, secret: bool = False) -> str:
        self.prompts.append(f"{prompt}{'(secret)' if secret else ''}")
        if self.lines:
            return self.lines.popleft()
        if self.then_wait:
            await asyncio.Event().wait()
        raise EOFError


def test_one_chat_is_formatted_like_the_classic_client() -> None:
    """A one-to-one message renders as '<time> [<id>]<name> said: <msg>'."""
    message = OneChat(id=2, name="bob", toid=1, msg="hi", time="2024-05-01 12:00:00")
    assert format_chat(message) == "2024-05-01 12:00:00 [2]bob said: hi"


def test_group_chat_is_formatted_with_its_group() -> None:
    """A group message renders with a 'group message[<groupid>]: ' prefix."""
    message = GroupChat(id=2, name="bob", groupid=7, msg="all", time="2024-05-01 12:00:00")
    assert format_chat(message) == "group message[7]: 2024-05-01 12:00:00 [2]bob said: all"


def test_events_show_refusals_in_words_and_skip_the_rest() -> None:
    """Refusals print their errmsg; successful answers and pongs print nothing."""
    assert format_event(OneChatAck(errno=30, errmsg="no such user")) == "error: no such user"
    assert format_event(Error(errno=10)) == "error: errno 10"
    assert format_event(OneChatAck(errno=0, mid="m")) is None
    assert format_event(Pong()) is None


def test_login_lists_friends_and_groups_with_members() -> None:
    """The login summary shows the user, friends (id name state), groups and members."""
    member = MemberEntry(id=1, name="alice", role="creator", state="online")
    group = GroupEntry(id=5, groupname="room", groupdesc="talk", users=[encode_entry(member)])
    ack = LoginAck(
        errno=0,
        id=1,
        name="alice",
        friends=[encode_entry(FriendEntry(id=2, name="bob", state="offline"))],
        groups=[encode_entry(group)],
    )
    lines = format_login(ack)
    assert "current login user => id:1 name:alice" in lines
    assert "2 bob offline" in lines
    assert lines.index("5 room talk") < lines.index("    1 alice online creator")


def test_friend_requests_show_how_to_accept() -> None:
    """A request pushed live, or listed at login, says how to accept it."""
    pushed = format_event(FriendRequest(id=7, name="carol"))
    assert pushed == "[7]carol wants to be your friend (addfriend:7 to accept)"
    ack = LoginAck(
        errno=0, id=1, name="alice", requests=[encode_entry(RequestEntry(id=7, name="carol"))]
    )
    assert "7 carol (addfriend:7 to accept)" in format_login(ack)


@pytest.mark.parametrize("text", ["", "x", "-3", "0", "1.5", "٣"])
def test_bad_ids_are_usage_errors(text: str) -> None:
    """Anything but a positive decimal number is refused with a hint."""
    with pytest.raises(UsageError, match="friendid must be a positive number"):
        parse_id(text, "friendid")


def test_ids_may_carry_spaces() -> None:
    """Spaces around an id are ignored."""
    assert parse_id(" 42 ", "groupid") == 42


async def _serve_session(server: PeerConnection) -> None:
    """Answer the scripted session of test_session_flow as a server would."""
    assert (await server.receive())["msgid"] == 4
    await server.send({"msgid": 5, "errno": 0, "id": 1})
    assert await server.receive() == {"msgid": 1, "id": 1, "password": "secret"}
    offline = OneChat(id=2, name="bob", toid=1, msg="while away", time="T0", mid="m0")
    await server.send(
        {
            "msgid": 2,
            "errno": 0,
            "id": 1,
            "name": "alice",
            "friends": [encode_entry(FriendEntry(id=2, name="bob", state="online"))],
            "offlinemsg": [encode(offline).decode()],
        },
        {"msgid": 10, "id": 2, "name": "bob", "groupid": 5, "msg": "pushed", "time": "T1"},
    )
    chat = await server.receive()
    assert (chat["msgid"], chat["toid"], chat["msg"]) == (6, 2, "hi: there")
    await server.send({"msgid": 106, "errno": 36, "errmsg": "not friends", "ref": chat["ref"]})
    for to_id, state in ((2, "online"), (3, "offline")):
        chat = await server.receive()
        assert (chat["msgid"], chat["toid"]) == (6, to_id)
        ack = {"msgid": 106, "errno": 0, "mid": "m", "seq": 1, "time": "T", "state": state}
        await server.send({**ack, "ref": chat["ref"]})
    assert await server.receive() == {"msgid": 9, "groupid": 5}
    await server.send({"msgid": 109, "errno": 0, "groupid": 5})
    assert await server.receive() == {"msgid": 3}
    await server.send({"msgid": 103, "errno": 0})


async def test_session_flow(peer: CannedPeer, capsys: pytest.CaptureFixture[str]) -> None:
    """Register, log in, see lists and pushes, chat (to someone offline too), mistype,
    join, log out and quit."""
    lines = ["2", "alice", "secret", "1", "1", "secret", "chat:2:hi: there"]
    lines += ["chat:2:seen at once", "chat:3:read later", "bogus"]
    lines += ["addfriend:x", "chat:2", "help", "addgroup:5", "loginout", "3"]
    script = ScriptedInput(lines)
    async with await ChatClient.connect(peer.host, peer.port) as client:
        server = await peer.accept()
        serving = asyncio.create_task(_serve_session(server))
        async with asyncio.timeout(seconds(10)):
            status = await Terminal(client, script).run()
            await serving
    out = capsys.readouterr().out
    assert status == 0
    assert "userpassword:(secret)" in script.prompts
    expected = [
        "alice registered, your userid is 1",
        "current login user => id:1 name:alice",
        "2 bob online",
        "T0 [2]bob said: while away",
        "group message[5]: T1 [2]bob said: pushed",
        "error: not friends",
        "stored for later: user 3 is offline",
        "invalid command 'bogus', type help to see the commands",
        "friendid must be a positive number, not 'x'; usage:",
        "message is missing; usage: one-to-one chat, format chat:friendid:message",
        "groupchat : group chat, format groupchat:groupid:message",
        "joined group 5",
        "alice logged out",
    ]
    for text in expected:
        assert text in out
    assert out.index("T0 [2]bob said") > out.index("current login user")
    assert "user 2 is offline" not in out  # its answer said "online"
    # The command list: once after the first login, and again on `help`.
    assert out.count("groupchat : group chat, format groupchat:groupid:message") == 2


async def test_ctrl_d_at_the_menu_exits_cleanly(peer: CannedPeer) -> None:
    """End of input at the start menu ends the session with status 0."""
    async with await ChatClient.connect(peer.host, peer.port) as client:
        await peer.accept()
        async with asyncio.timeout(seconds(10)):
            assert await Terminal(client, ScriptedInput([])).run() == 0


async def test_connection_loss_ends_the_session(
    peer: CannedPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the server goes away while the user is typing, the session ends with status 1."""
    async with await ChatClient.connect(peer.host, peer.port) as client:
        server = await peer.accept()
        session = asyncio.create_task(Terminal(client, ScriptedInput([], then_wait=True)).run())
        await server.close()
        async with asyncio.timeout(seconds(10)):
            assert await session == 1
    assert "connection to the server was lost" in capsys.readouterr().out
