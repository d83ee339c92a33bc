"""The terminal client through a pty, against a real node: what a person at a terminal sees.

These are plain synchronous tests: pexpect blocks, and no event loop runs in
the test process, so the blocking-call detector has nothing to flag.
"""

import os
import re
import sys
from collections.abc import Callable, Iterator

import pexpect
import pytest

from tests.support.node import NodeFactory, NodeHandle
from tests.support.timing import seconds

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


class TerminalUser:
    """One ``clusterchat client`` process on a pty, and the steps a user takes in it."""

    def __init__(self, node: NodeHandle) -> None:
        env = dict(os.environ, TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "clusterchat", "client", node.host, str(node.port)],
            env=env,
            dimensions=(50, 200),
            timeout=seconds(15),
            encoding="utf-8",
            codec_errors="replace",
        )
        self.name = ""

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for ``pattern`` (a regular expression) in the output; return the match."""
        self.child.expect(pattern)
        match = self.child.match
        assert isinstance(match, re.Match)
        return match

    def register(self, name: str, password: str) -> int:
        """Register from the start menu; return the new user id."""
        self.expect("choice:")
        self.child.sendline("2")
        self.expect("username:")
        self.child.sendline(name)
        self.expect("userpassword:")
        self.child.sendline(password)
        return int(self.expect(r"your userid is (\d+)").group(1))

    def login(self, user_id: int, password: str, name: str) -> None:
        """Log in from the start menu and wait for the command prompt."""
        self.expect("choice:")
        self.child.sendline("1")
        self.expect("userid:")
        self.child.sendline(str(user_id))
        self.expect("userpassword:")
        self.child.sendline(password)
        self.expect(rf"current login user => id:{user_id} name:{name}")
        self.name = name
        self.prompt()

    def prompt(self) -> None:
        """Wait for the command prompt."""
        self.expect(f"{re.escape(self.name)}>")

    def command(self, line: str) -> None:
        """Type a command at the prompt and press Enter."""
        self.child.sendline(line)

    def quit(self) -> int:
        """Choose quit at the start menu; return the exit status."""
        self.expect("choice:")
        self.child.sendline("3")
        self.child.expect(pexpect.EOF)
        self.child.close()
        status = self.child.exitstatus
        assert isinstance(status, int)
        return status


@pytest.fixture
def terminals(node_factory: NodeFactory) -> Iterator[Callable[[], TerminalUser]]:
    """Start terminal clients against one node; stop each by pid at teardown."""
    node = node_factory()
    users: list[TerminalUser] = []

    def start() -> TerminalUser:
        user = TerminalUser(node)
        users.append(user)
        return user

    yield start
    for user in users:
        if user.child.isalive():
            user.child.close(force=True)
        assert not user.child.isalive(), f"terminal pid {user.child.pid} still running"


def test_chat_arrives_above_a_half_typed_line(terminals: Callable[[], TerminalUser]) -> None:
    """A message printed while the user types leaves the typed text intact, and it is sent."""
    alice, bob = terminals(), terminals()
    alice_id = alice.register("alice", "pw-a")
    bob_id = bob.register("bob", "pw-b")
    alice.login(alice_id, "pw-a", "alice")
    bob.login(bob_id, "pw-b", "bob")
    alice.command(f"addfriend:{bob_id}")
    alice.expect(f"friend request sent to {bob_id}: friends once they add you too")
    bob.expect(rf"\[{alice_id}\]alice wants to be your friend \(addfriend:{alice_id} to accept\)")
    bob.command(f"addfriend:{alice_id}")
    bob.expect(f"friend {alice_id} added")
    alice.prompt()
    bob.prompt()

    bob.child.send(f"chat:{alice_id}:half typ")
    bob.expect("half typ")
    alice.command(f"chat:{bob_id}:hello bob")
    bob.expect(rf"{_TIME} \[{alice_id}\]alice said: hello bob")
    bob.expect(rf"bob> chat:{alice_id}:half typ")  # the prompt and the typed text, redrawn
    bob.command("ed line")
    alice.expect(rf"{_TIME} \[{bob_id}\]bob said: half typed line")

    bob.command("loginout")
    assert bob.quit() == 0
    alice.command("quit")
    alice.child.expect(pexpect.EOF)
    alice.child.close()
    assert alice.child.exitstatus == 0


def test_groups_offline_messages_and_mistakes(terminals: Callable[[], TerminalUser]) -> None:
    """Group chat reaches members, mail sent while offline shows at login, typos get hints."""
    alice, bob = terminals(), terminals()
    alice_id = alice.register("alice", "pw-a")
    bob_id = bob.register("bob", "pw-b")
    alice.login(alice_id, "pw-a", "alice")
    bob.login(bob_id, "pw-b", "bob")

    alice.command("creategroup:room:a place to talk")
    group_id = int(alice.expect(r"group (\d+) \(room\) created").group(1))
    bob.command(f"addgroup:{group_id}")
    bob.expect(f"joined group {group_id}")
    bob.prompt()
    alice.command(f"groupchat:{group_id}:hello room")
    bob.expect(rf"group message\[{group_id}\]: {_TIME} \[{alice_id}\]alice said: hello room")

    bob.command("frobnicate")
    bob.expect("invalid command 'frobnicate', type help to see the commands")
    bob.command("chat:nobody:hi")
    bob.expect("friendid must be a positive number")
    bob.command("help")
    bob.expect("creategroup : create a group, format creategroup:groupname:groupdesc")

    bob.command("loginout")
    bob.expect("choice:")
    alice.prompt()
    alice.command(f"addfriend:{bob_id}")
    alice.expect(f"friend request sent to {bob_id}")
    alice.command(f"chat:{bob_id}:while you were away")
    alice.expect(f"stored for later: user {bob_id} is offline")
    alice.prompt()
    bob.child.sendline("1")
    bob.expect("userid:")
    bob.child.sendline(str(bob_id))
    bob.expect("userpassword:")
    bob.child.sendline("pw-b")
    bob.expect(rf"{alice_id} alice \(addfriend:{alice_id} to accept\)")
    bob.expect(rf"{group_id} room a place to talk")
    bob.expect(rf"{_TIME} \[{alice_id}\]alice said: while you were away")

    bob.command("loginout")
    assert bob.quit() == 0
    alice.child.sendcontrol("d")
    alice.child.expect(pexpect.EOF)
    alice.child.close()
    assert alice.child.exitstatus == 0


def test_wrong_password_is_explained(terminals: Callable[[], TerminalUser]) -> None:
    """A failed login shows the server's reason and returns to the menu."""
    carol = terminals()
    carol_id = carol.register("carol", "right")
    carol.expect("choice:")
    carol.child.sendline("1")
    carol.expect("userid:")
    carol.child.sendline(str(carol_id))
    carol.expect("userpassword:")
    carol.child.sendline("wrong")
    carol.expect("error: id or password is invalid!")
    assert carol.quit() == 0
