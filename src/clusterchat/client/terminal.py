"""The interactive terminal client, with the classic ChatClient's menu and commands.

Start menu: 1 login (user id, then password), 2 register (name, then
password), 3 quit. After login it shows the user, the friends, the groups with
their members and the messages stored while offline, then reads commands
(``help`` lists them). Incoming messages are printed above the line being
typed: prompt_toolkit's ``patch_stdout`` redraws the prompt and the half-typed
input after each one. See PROTOCOL-CLASSIC.md, "The classic client's commands".

Run it with ``clusterchat client HOST PORT`` or
``python -m clusterchat.client.terminal HOST PORT``.
"""

import asyncio
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.history import DummyHistory
from prompt_toolkit.patch_stdout import patch_stdout

from clusterchat.client.client import ChatClient, ChatClientError
from clusterchat.client.entries import friend_requests, friends, groups, offline_messages
from clusterchat.protocol import (
    OFFLINE,
    Answer,
    FriendRequest,
    GroupChat,
    InvalidMessage,
    LoginAck,
    Message,
    OneChat,
)

__all__ = [
    "COMMANDS",
    "LineInput",
    "PipeInput",
    "PromptInput",
    "Terminal",
    "UsageError",
    "format_chat",
    "format_event",
    "format_login",
    "main",
    "parse_id",
    "run_terminal",
]

#: Each command and its help line, in the classic client's order.
COMMANDS: Final[dict[str, str]] = {
    "help": "show all commands, format help",
    "chat": "one-to-one chat, format chat:friendid:message",
    "addfriend": "add a friend, format addfriend:friendid",
    "creategroup": "create a group, format creategroup:groupname:groupdesc",
    "addgroup": "join a group, format addgroup:groupid",
    "groupchat": "group chat, format groupchat:groupid:message",
    "loginout": "log out, format loginout",
    "quit": "leave the program, format quit",
}

#: Seconds to wait for the server's answer to one request.
REQUEST_TIMEOUT: Final = 30.0

_MENU: Final = "\n".join(
    ["========================", "1. login", "2. register", "3. quit", "========================"]
)
_T = TypeVar("_T")


class UsageError(Exception):
    """A command the user typed cannot be run as written; the message says why."""


def parse_id(text: str, what: str) -> int:
    """Parse a user or group id typed by the user.

    Raises:
        UsageError: ``text`` is not a positive integer.
    """
    text = text.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) <= 0:
        raise UsageError(f"{what} must be a positive number, not {text!r}")
    return int(text)


def format_chat(message: OneChat | GroupChat) -> str:
    """Render a chat message the way the classic client prints it."""
    line = f"{message.time or ''} [{message.id}]{message.name or ''} said: {message.msg}"
    if isinstance(message, GroupChat):
        return f"group message[{message.groupid}]: {line}"
    return line


def format_event(message: Message) -> str | None:
    """Render a push or unsolicited answer, or None for one not worth showing."""
    if isinstance(message, OneChat | GroupChat):
        return format_chat(message)
    if isinstance(message, FriendRequest):
        return (
            f"[{message.id}]{message.name} wants to be your friend"
            f" (addfriend:{message.id} to accept)"
        )
    if isinstance(message, Answer) and message.errno != 0:
        return f"error: {message.errmsg or f'errno {message.errno}'}"
    return None


def format_login(ack: LoginAck) -> list[str]:
    """Render the user, friends and groups of a successful login, as the classic client did.

    Raises:
        InvalidMessage: A list entry of the answer cannot be decoded.
    """
    lines = [
        "======================login user======================",
        f"current login user => id:{ack.id} name:{ack.name}",
        "----------------------friend list---------------------",
    ]
    lines += [f"{friend.id} {friend.name} {friend.state}" for friend in friends(ack)]
    requests = friend_requests(ack)
    if requests:
        lines.append("-------------------friend requests--------------------")
        lines += [f"{r.id} {r.name} (addfriend:{r.id} to accept)" for r in requests]
    lines.append("----------------------group list----------------------")
    for group, members in groups(ack):
        lines.append(f"{group.id} {group.groupname} {group.groupdesc}")
        lines += [f"    {m.id} {m.name} {m.state} {m.role}" for m in members]
    lines.append("======================================================")
    return lines


class LineInput(Protocol):
    """Where the terminal reads the user's lines from."""

    async def ask(self, prompt: str, *, secret: bool = False) -> str:
        """Show ``prompt`` and return the next line (without its newline).

        Raises:
            EOFError: The input has ended (Ctrl-D).
            KeyboardInterrupt: The user pressed Ctrl-C.
        """
        ...


class PromptInput:
    """Lines from an interactive terminal, through prompt_toolkit.

    Use inside ``patch_stdout()`` so that output printed while a line is being
    typed appears above it.
    """

    def __init__(self) -> None:
        self._commands: PromptSession[str] = PromptSession()
        self._secrets: PromptSession[str] = PromptSession(history=DummyHistory())

    async def ask(self, prompt: str, *, secret: bool = False) -> str:
        """Prompt on the terminal; a secret is echoed as stars and kept out of the history."""
        session = self._secrets if secret else self._commands
        return await session.prompt_async(prompt, is_password=secret)


class PipeInput:
    """Lines from a stdin that is not a terminal (a pipe or a file), for scripts.

    A daemon thread reads the lines, so the event loop never blocks and a
    pending read never delays the exit.
    """

    def __init__(self) -> None:
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(self._lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def ask(self, prompt: str, *, secret: bool = False) -> str:
        """Print the prompt and return the next line read from stdin."""
        print(prompt, end="", flush=True)
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)
            raise EOFError
        return line


class Terminal:
    """One interactive session over one connection.

    Args:
        client: The connected client.
        lines: Where the user's input comes from.
    """

    def __init__(self, client: ChatClient, lines: LineInput) -> None:
        self._client = client
        self._lines = lines
        self._user = ""
        self._helped = False

    async def run(self) -> int:
        """Run until the user quits (0) or the connection is lost (1)."""
        listener = asyncio.create_task(self._listen())
        ui = asyncio.create_task(self._interact())
        await asyncio.wait({listener, ui}, return_when=asyncio.FIRST_COMPLETED)
        if ui.done():
            listener.cancel()
            await asyncio.wait([listener])
            return ui.result()
        ui.cancel()
        await asyncio.wait([ui])
        _show("connection to the server was lost")
        return 1

    async def _listen(self) -> None:
        async for message in self._client.messages():
            text = format_event(message)
            if text is not None:
                _show(text)

    async def _interact(self) -> int:
        try:
            while True:
                _show(_MENU)
                choice = (await self._ask("choice:")).strip()
                if choice == "1":
                    if await self._login() and not await self._chat_loop():
                        return 0
                elif choice == "2":
                    await self._register()
                elif choice == "3":
                    return 0
                elif choice:
                    _show("invalid input, choose 1, 2 or 3")
        except (EOFError, KeyboardInterrupt):
            return 0
        except ConnectionError as exc:
            _show(f"connection to the server was lost: {exc}")
            return 1

    async def _ask(self, prompt: str, *, secret: bool = False) -> str:
        return await self._lines.ask(prompt, secret=secret)

    async def _answer(self, request: Awaitable[_T]) -> _T | None:
        """Await a request; show a refusal or a missing answer and return None for them."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await request
        except ChatClientError as exc:
            _show(f"error: {exc.errmsg}")
        except TimeoutError:
            _show("no answer from the server")
        return None

    async def _login(self) -> bool:
        try:
            user_id = parse_id(await self._ask("userid:"), "userid")
        except UsageError as exc:
            _show(str(exc))
            return False
        password = await self._ask("userpassword:", secret=True)
        ack = await self._answer(self._client.login(user_id, password))
        if ack is None:
            return False
        self._user = ack.name or str(user_id)
        try:
            _show("\n".join(format_login(ack)))
            for message in offline_messages(ack):
                _show(format_chat(message))
        except InvalidMessage as exc:
            _show(f"part of the login answer is unreadable: {exc}")
        if not self._helped:  # once; `help` shows it again
            _show(_help())
            self._helped = True
        return True

    async def _register(self) -> None:
        name = (await self._ask("username:")).strip()
        if not name:
            _show("the name must not be empty")
            return
        password = await self._ask("userpassword:", secret=True)
        ack = await self._answer(self._client.register(name, password))
        if ack is not None:
            _show(f"{name} registered, your userid is {ack.id}, do not forget it!")

    async def _chat_loop(self) -> bool:
        """Read commands until ``loginout`` (True: back to the menu) or ``quit`` (False)."""
        handlers: dict[str, Callable[[str], Awaitable[None]]] = {
            "chat": self._chat,
            "addfriend": self._add_friend,
            "creategroup": self._create_group,
            "addgroup": self._add_group,
            "groupchat": self._group_chat,
        }
        while True:
            line = (await self._ask(f"{self._user}> ")).strip()
            name, _, args = line.partition(":")
            name = name.strip().lower()
            if not line:
                continue
            if name == "help":
                _show(_help())
            elif name == "loginout":
                if await self._answer(self._client.logout()) is not None:
                    _show(f"{self._user} logged out")
                return True
            elif name == "quit":
                return False
            elif name in handlers:
                try:
                    await handlers[name](args)
                except UsageError as exc:
                    _show(f"{exc}; usage: {COMMANDS[name]}")
            else:
                _show(f"invalid command {name!r}, type help to see the commands")

    async def _chat(self, args: str) -> None:
        friend, text = _split(args, "friendid", "message")
        to_id = parse_id(friend, "friendid")
        ack = await self._answer(self._client.chat_acked(to_id, text))
        if ack is not None and ack.state == OFFLINE:
            _show(f"stored for later: user {to_id} is offline")

    async def _group_chat(self, args: str) -> None:
        group, text = _split(args, "groupid", "message")
        await self._answer(self._client.group_chat_acked(parse_id(group, "groupid"), text))

    async def _add_friend(self, args: str) -> None:
        friend_id = parse_id(args, "friendid")
        ack = await self._answer(self._client.add_friend(friend_id))
        if ack is not None and ack.pending:
            _show(f"friend request sent to {friend_id}: friends once they add you too")
        elif ack is not None:
            _show(f"friend {friend_id} added")

    async def _create_group(self, args: str) -> None:
        name, desc = _split(args, "groupname", "groupdesc", allow_empty_second=True)
        ack = await self._answer(self._client.create_group(name.strip(), desc))
        if ack is not None:
            _show(f"group {ack.groupid} ({name.strip()}) created")

    async def _add_group(self, args: str) -> None:
        group_id = parse_id(args, "groupid")
        if await self._answer(self._client.add_group(group_id)) is not None:
            _show(f"joined group {group_id}")


def _split(
    args: str, first: str, second: str, *, allow_empty_second: bool = False
) -> tuple[str, str]:
    head, sep, tail = args.partition(":")
    if not head.strip():
        raise UsageError(f"{first} is missing")
    if not sep or not (tail or allow_empty_second):
        raise UsageError(f"{second} is missing")
    return head, tail


def _help() -> str:
    return "\n".join(["show command list >>>"] + [f"{k} : {v}" for k, v in COMMANDS.items()])


def _show(text: str) -> None:
    print(text, flush=True)


async def run_terminal(host: str, port: int, *, tls: ssl.SSLContext | None = None) -> int:
    """Run the interactive client against the node (or balancer) at ``host:port``.

    Args:
        host: Address to connect to.
        port: TCP port to connect to.
        tls: Connect with TLS, verifying the server with this context.

    Returns:
        The process exit status: 0 when the user quit, 1 when the connection
        could not be made or was lost.
    """
    try:
        client = await ChatClient.connect(host, port, tls=tls)
    except OSError as exc:
        print(f"cannot connect to {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    async with client:
        if not sys.stdin.isatty():
            return await Terminal(client, PipeInput()).run()
        with patch_stdout():
            return await Terminal(client, PromptInput()).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m clusterchat.client.terminal [HOST] [PORT]``.

    Returns:
        The exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or (len(args) == 2 and not args[1].isdecimal()):
        print("usage: python -m clusterchat.client.terminal [HOST] [PORT]", file=sys.stderr)
        return 2
    host = args[0] if args else "127.0.0.1"
    port = int(args[1]) if len(args) == 2 else 6000
    try:
        return asyncio.run(run_terminal(host, port))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
