"""``ChatClient``: an asyncio client for one clusterchat connection.

Theory of operation
-------------------
The connection is an ``asyncio.Protocol`` (``_Stream``): each read is handed
to the client as it arrives, split into frames with ``JsonStreamDecoder`` and
decoded there, with no reader task to wake and no task per message:

* An answer resolves the future of the oldest request still waiting for that
  answer type (the server answers in order, so FIFO per type is exact). A
  request whose caller gave up (cancelled) keeps its place in the queue, so the
  late answer is consumed by it and does not shift later answers.
* ``OneChatAck`` / ``GroupChatAck`` carrying a ``ref`` resolve the request that
  sent that ``ref``; one without a ``ref`` is the refusal of a fire-and-forget
  chat message and becomes an event.
* ``Error`` (msgid 100) resolves the oldest request whose msgid equals its
  ``req`` (it is turned into that request's answer type with the same
  ``errno``/``errmsg``), or becomes an event when nothing waits.
* Everything else (chat pushes, unsolicited answers) goes to an unbounded event
  queue read with ``messages()`` or ``next_message()``, or, after ``listen()``,
  to a callback as it is read.

Acknowledged delivery (docs/protocol.md §3): a login with a ``device`` whose
answer carries a ``cursor`` starts a *device session*. The client then keeps
the highest ``cursor`` of the pushes it passed on (``cursor``), drops every
push whose cursor is not above it (counted in ``duplicates_dropped``: exactly
once as the user sees it, whatever the server repeats), and acknowledges
cumulatively with ``Ack``. Automatic acknowledgement (the default) is
coalesced: accepting a push schedules one callback with ``call_soon`` (a
handle, not a task), which runs after the reader has handled everything of the
current read and sends one ``Ack`` for the highest cursor, so there is at most
one ``Ack`` per event-loop turn. A push counts as received when it is queued
for ``messages()`` or handed to the ``listen()`` callback; an application
that must not lose what it had no time to process logs in with
``auto_ack=False`` and calls ``ack()`` itself. To resume on a new
connection, log in with ``after=old_client.cursor``.

When the connection ends, every waiting request fails with ``ConnectionError``
and the event iterator ends after the events already queued.
"""

import asyncio
import itertools
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from types import TracebackType
from typing import Final, Self, TypeVar

from clusterchat.protocol import (
    Ack,
    AddFriend,
    AddFriendAck,
    AddGroup,
    AddGroupAck,
    Answer,
    CreateGroup,
    CreateGroupAck,
    Error,
    ErrorCode,
    FramingError,
    GroupChat,
    GroupChatAck,
    InvalidMessage,
    Invite,
    InviteAck,
    JsonStreamDecoder,
    Limits,
    Login,
    LoginAck,
    Logout,
    LogoutAck,
    Message,
    MsgId,
    OneChat,
    OneChatAck,
    Ping,
    Pong,
    RegAck,
    Register,
    ServerMessage,
    decode_server_message,
    encode,
)
from clusterchat.settings import Settings

__all__ = ["ChatClient", "ChatClientError"]

logger = logging.getLogger("clusterchat.client")

_A = TypeVar("_A", bound=Answer)

#: Largest frame accepted from the server: a login answer with many offline
#: messages can be far larger than what a client may send. The decoder reads
#: only the frame size and the nesting; the rest are the node defaults.
_CLIENT_LIMITS: Final = replace(Settings().pick(Limits), max_frame=16 * 1024 * 1024, max_depth=32)

#: Which request msgid each answer type answers.
_ANSWERS: Final[dict[type[Message], int]] = {
    LoginAck: MsgId.LOGIN,
    RegAck: MsgId.REG,
    LogoutAck: MsgId.LOGOUT,
    AddFriendAck: MsgId.ADD_FRIEND,
    CreateGroupAck: MsgId.CREATE_GROUP,
    AddGroupAck: MsgId.ADD_GROUP,
    InviteAck: MsgId.INVITE,
    Pong: MsgId.PING,
}
_CHAT_ACKS: Final[dict[type[Message], int]] = {
    OneChatAck: MsgId.ONE_CHAT,
    GroupChatAck: MsgId.GROUP_CHAT,
}


#: A request waiting for its answer, and what to do with the answer as soon as it is
#: read (before later frames of the same read are handled), or None.
_Waiter = tuple[asyncio.Future[Message], Callable[[Message], None] | None]


class ChatClientError(Exception):
    """The server refused a request.

    Attributes:
        errno: The ``errno`` of the answer (never 0).
        errmsg: The server's explanation, or a generic one when it gave none.
        answer: The answer itself (``Error`` or the request's answer type).
    """

    def __init__(self, errno: int, errmsg: str, answer: Message | None = None) -> None:
        super().__init__(f"{errmsg} (errno {errno})")
        self.errno = errno
        self.errmsg = errmsg
        self.answer = answer


class ChatClient:
    """One connection to a clusterchat node.

    Create it with ``await ChatClient.connect(host, port)``; use it as an async
    context manager or call ``close()``. Request methods may be called
    concurrently; each returns its own answer. Pushes and unsolicited answers
    are read with ``messages()``/``next_message()``, or handed to a callback
    as they are read after ``listen()``.

    Attributes:
        classic: Frames end with NUL (as the classic client's), else newline.
        duplicates_dropped: Pushes of device sessions dropped because their
            cursor was not above the highest one already passed on.
        acks_sent: ``Ack`` frames written (automatic and explicit).
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: "_Stream",
        *,
        classic: bool = False,
    ) -> None:
        """Wrap a connection made by ``connect()`` (its transport and protocol)."""
        self.classic = classic
        self._transport = transport
        self._stream = stream
        self._terminator = b"\x00" if classic else b"\n"
        self._decoder = JsonStreamDecoder(_CLIENT_LIMITS)
        self._waiting: dict[int, deque[_Waiter]] = {}
        self._chat_waiting: dict[tuple[int, int], asyncio.Future[Message]] = {}
        self._events: asyncio.Queue[ServerMessage | None] = asyncio.Queue()
        self._listener: Callable[[ServerMessage | None], None] | None = None
        self._refs = itertools.count(1)
        self._closed = False
        # Acknowledged delivery: the device of the latest device session on this
        # connection, whether a session is acknowledging now, the highest cursor
        # passed on and the highest one acknowledged to the server.
        self._device: str | None = None
        self._acking = False
        self._auto_ack = True
        self._cursor: int | None = None
        self._acked: int | None = None
        self._last_mid: str | None = None
        self._ack_scheduled = False
        self.duplicates_dropped = 0
        self.acks_sent = 0
        self._loop = asyncio.get_running_loop()
        stream.attach(self._received, self._lost)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        classic: bool = False,
        tls: ssl.SSLContext | None = None,
        local_address: tuple[str, int] | None = None,
    ) -> Self:
        """Open a TCP connection to a node.

        Args:
            host: The node's (or balancer's) address.
            port: Its TCP port.
            classic: End frames with NUL as the classic client does (the server
                then answers with NUL-terminated frames); else newline.
            tls: Speak TLS, verifying the server with this context.
            local_address: Connect from this address (host, port; port 0 for
                any), as a load generator spreading over source addresses does.

        Returns:
            A connected client.

        Raises:
            OSError: The connection could not be made.
        """
        stream = _Stream()
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: stream, host, port, ssl=tls, local_addr=local_address
        )
        return cls(transport, stream, classic=classic)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (closed by us or lost)."""
        return self._closed

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's address of the TCP connection (host, port), or None if unknown."""
        sockname = self._transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            return str(sockname[0]), int(sockname[1])
        return None

    @property
    def acking(self) -> bool:
        """Whether a device session (acknowledged delivery) is logged in now.

        False before login, after logout, for a login without ``device``, and
        when the server did not answer the device login with a ``cursor``.
        """
        return self._acking

    @property
    def device(self) -> str | None:
        """The device of the latest device session on this connection, or None."""
        return self._device

    @property
    def cursor(self) -> int | None:
        """The highest log position of this device received so far, or None.

        Pass it as ``after`` when logging in again (on a new connection after
        this one was lost): the next session resumes after it. It outlives the
        session and the connection.
        """
        return self._cursor

    @property
    def acked_cursor(self) -> int | None:
        """The highest cursor the server knows this device has: the resume point
        it confirmed at login, or the last ``Ack`` written; None outside device sessions.
        """
        return self._acked

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; waiting requests fail with ``ConnectionError``."""
        self._shut("connection closed")
        await self._stream.closed()

    # --- requests -------------------------------------------------------------------------

    async def register(self, name: str, password: str, *, check: bool = True) -> RegAck:
        """Create an account.

        Returns:
            The answer; its ``id`` is the new user's id.

        Raises:
            ChatClientError: ``check`` is true and the server refused (name taken...).
            ConnectionError: The connection ended before the answer came.
        """
        return await self._request(Register(name=name, password=password), RegAck, check)

    async def login(
        self,
        user_id: int,
        password: str,
        *,
        device: str | None = None,
        after: int | None = None,
        auto_ack: bool = True,
        check: bool = True,
    ) -> LoginAck:
        """Log in; decode the lists of the answer with ``friends``, ``groups`` and
        ``offline_messages``.

        With ``device`` the session opts in to acknowledged delivery: if the
        answer carries a ``cursor`` (the position the pushes resume after), no
        stored messages come in the answer; they arrive as pushes carrying
        ``cursor``, which the client de-duplicates and acknowledges.

        Args:
            user_id: The account.
            password: Its password.
            device: A name for this device (at most 64 characters), stable across
                its connections; None logs in as a classic session.
            after: The last cursor this device already has (``cursor`` of the
                previous connection). None sends this connection's own ``cursor``
                when an earlier session here was of the same device.
            auto_ack: Acknowledge every push automatically as it is queued
                (coalesced); False leaves acknowledging to ``ack()``.
            check: Raise on refusal instead of returning the answer.

        Raises:
            ChatClientError: ``check`` is true and the server refused (errno 1 bad
                credentials, 2 already logged in).
            ConnectionError: The connection ended before the answer came.
            ValueError: ``after`` without ``device``, or negative.
        """
        if after is not None and device is None:
            raise ValueError("after needs a device")
        if after is not None and after < 0:
            raise ValueError("after must not be negative")
        if device is not None and after is None and device == self._device:
            after = self._cursor
        request = Login(id=user_id, password=password, device=device, after=after)

        def started(answer: Message) -> None:
            if isinstance(answer, LoginAck) and answer.errno == 0:
                self._start_session(device, after, auto_ack, answer.cursor)

        reply = await self._exchange(request, MsgId.LOGIN, started)
        return _typed(reply, LoginAck, check)

    async def logout(self, *, check: bool = True) -> LogoutAck:
        """Log out; the connection stays open for another login.

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came.
        """

        def ended(answer: Message) -> None:
            if isinstance(answer, LogoutAck) and answer.errno == 0:
                self._acking = False

        return _typed(await self._exchange(Logout(), MsgId.LOGOUT, ended), LogoutAck, check)

    async def add_friend(self, friend_id: int, *, check: bool = True) -> AddFriendAck:
        """Add ``friend_id`` to the logged-in user's friends.

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came.
        """
        return await self._request(AddFriend(friendid=friend_id), AddFriendAck, check)

    async def create_group(
        self, name: str, desc: str, *, invite_only: bool = False, check: bool = True
    ) -> CreateGroupAck:
        """Create a group with the logged-in user as its creator.

        With ``invite_only``, only users the creator invites (``invite``) can join.

        Returns:
            The answer; its ``groupid`` is the new group's id.

        Raises:
            ChatClientError: ``check`` is true and the server refused (name taken...).
            ConnectionError: The connection ended before the answer came.
        """
        request = CreateGroup(groupname=name, groupdesc=desc, invite_only=invite_only)
        return await self._request(request, CreateGroupAck, check)

    async def invite(self, group_id: int, user_id: int, *, check: bool = True) -> InviteAck:
        """Let ``user_id`` join the invite-only group ``group_id`` (its creator only).

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came.
        """
        return await self._request(Invite(groupid=group_id, userid=user_id), InviteAck, check)

    async def add_group(self, group_id: int, *, check: bool = True) -> AddGroupAck:
        """Join group ``group_id``.

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came.
        """
        return await self._request(AddGroup(groupid=group_id), AddGroupAck, check)

    async def ping(self) -> Pong:
        """Round-trip a keep-alive.

        Raises:
            ChatClientError: The server answered with an error.
            ConnectionError: The connection ended before the answer came.
        """
        ref = next(self._refs)
        reply = await self._exchange(Ping(ref=ref), MsgId.PING)
        if isinstance(reply, Pong):
            return reply
        assert isinstance(reply, Error), reply
        raise ChatClientError(reply.errno, _errmsg(reply), reply)

    async def chat(
        self, to_id: int, text: str, *, ref: int | None = None, cid: str | None = None
    ) -> None:
        """Send a one-to-one message without waiting for any answer.

        A refusal (not friends, unknown user...) arrives later as a ``OneChatAck``
        event; with ``ref`` or ``cid`` the server acknowledges acceptance too,
        also as an event.

        Raises:
            ConnectionError: The connection has ended.
        """
        await self._send(OneChat(toid=to_id, msg=text, ref=ref, cid=cid))

    async def chat_acked(
        self,
        to_id: int,
        text: str,
        *,
        ref: int | None = None,
        cid: str | None = None,
        check: bool = True,
    ) -> OneChatAck:
        """Send a one-to-one message and wait for the server to accept or refuse it.

        Args:
            to_id: The recipient's user id.
            text: The message.
            ref: The correlation number to send; a fresh one when None.
            cid: This client's id for the message (at most 64 characters). Sending
                it again (on any connection of the same user, after a connection
                was lost before the answer came) is answered with the original
                ``mid``/``seq``/``time``; the message is stored and delivered once.
            check: Raise on refusal instead of returning the answer.

        Returns:
            The answer; on success ``mid`` is the message's cluster-unique id,
            ``seq`` its position in the conversation, ``time`` the server's
            clock (the latter two from servers with the durable log) and
            ``state`` whether the recipient was online (``"online"``) or gets
            it at the next login (``"offline"``; None when the server could
            not tell, or is older).

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came: the
                message may or may not have been accepted (retry with ``cid``).
        """
        ref = next(self._refs) if ref is None else ref
        request = OneChat(toid=to_id, msg=text, ref=ref, cid=cid)
        return await self._chat_request(request, ref, OneChatAck, check)

    async def group_chat(
        self, group_id: int, text: str, *, ref: int | None = None, cid: str | None = None
    ) -> None:
        """Send a message to a group without waiting (see ``chat``).

        Raises:
            ConnectionError: The connection has ended.
        """
        await self._send(GroupChat(groupid=group_id, msg=text, ref=ref, cid=cid))

    async def group_chat_acked(
        self,
        group_id: int,
        text: str,
        *,
        ref: int | None = None,
        cid: str | None = None,
        check: bool = True,
    ) -> GroupChatAck:
        """Send a message to a group and wait for the server's answer (see ``chat_acked``).

        Raises:
            ChatClientError: ``check`` is true and the server refused.
            ConnectionError: The connection ended before the answer came.
        """
        ref = next(self._refs) if ref is None else ref
        request = GroupChat(groupid=group_id, msg=text, ref=ref, cid=cid)
        return await self._chat_request(request, ref, GroupChatAck, check)

    async def ack(self, cursor: int | None = None) -> None:
        """Acknowledge every push of this device session up to ``cursor``.

        Cumulative; acknowledging what was already acknowledged sends nothing.
        Needed only with ``login(..., auto_ack=False)``; harmless otherwise.

        Args:
            cursor: The highest cursor the application has taken care of; None
                is everything received (``self.cursor``).

        Raises:
            RuntimeError: No device session is logged in on this connection.
            ValueError: ``cursor`` is above the highest one received.
            ConnectionError: The connection has ended.
        """
        self._check_open()
        if not self._acking:
            raise RuntimeError("no device session: log in with a device first")
        target = self._cursor if cursor is None else cursor
        if target is None or (self._acked is not None and target <= self._acked):
            return
        if self._cursor is None or target > self._cursor:
            raise ValueError(f"cursor {target} was not received (highest {self._cursor})")
        self._acked = target
        self.acks_sent += 1
        await self._send(Ack(cursor=target))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests of malformed input); answers become events.

        Raises:
            ConnectionError: The connection has ended.
        """
        self._check_open()
        self._transport.write(data)
        await self._drain()

    # --- events ---------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[ServerMessage]:
        """Yield pushes and unsolicited answers until the connection ends."""
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)  # for every other reader, and the next call
                return
            yield item

    def listen(self, listener: Callable[[ServerMessage | None], None]) -> None:
        """Call ``listener`` with each push and unsolicited answer when read, None at the end.

        For a client that reacts to every push (no task or queue per message);
        what was queued for ``messages()`` before is handed over first. The
        listener runs inside the connection's read callback: it must not block or raise.
        """
        while not self._events.empty():
            listener(self._events.get_nowait())
        self._listener = listener

    # A timeout argument is this method's point: waiting for one event is the common case.
    async def next_message(self, timeout: float | None = None) -> ServerMessage:  # noqa: ASYNC109
        """Return the next push or unsolicited answer.

        Args:
            timeout: Seconds to wait; None waits as long as the connection lives.

        Raises:
            TimeoutError: Nothing arrived within ``timeout``.
            ConnectionError: The connection has ended and every event was read.
        """
        async with asyncio.timeout(timeout):
            item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
            raise ConnectionError("connection closed")
        return item

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionError("connection closed")

    async def _drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        await self._stream.writable()

    async def _send(self, message: Message) -> None:
        self._check_open()
        self._transport.write(encode(message) + self._terminator)
        await self._drain()

    async def _exchange(
        self, request: Message, key: int, on_answer: Callable[[Message], None] | None = None
    ) -> Message:
        self._check_open()
        future: asyncio.Future[Message] = self._loop.create_future()
        self._waiting.setdefault(key, deque()).append((future, on_answer))
        try:
            await self._send(request)
        except BaseException:
            _discard(future)  # it keeps its place: a late answer is still consumed
            raise
        return await future

    async def _request(self, request: Message, answer_type: type[_A], check: bool) -> _A:
        tag = request.__struct_config__.tag
        assert isinstance(tag, int)
        return _typed(await self._exchange(request, tag), answer_type, check)

    async def _chat_request(
        self, request: OneChat | GroupChat, ref: int, answer_type: type[_A], check: bool
    ) -> _A:
        self._check_open()
        key = (_CHAT_ACKS[answer_type], ref)
        if key in self._chat_waiting:
            raise ValueError(f"ref {ref} is already waiting for an answer")
        future: asyncio.Future[Message] = self._loop.create_future()
        self._chat_waiting[key] = future
        try:
            try:
                await self._send(request)
            except BaseException:
                _discard(future)
                raise
            reply = await future
        finally:
            if self._chat_waiting.get(key) is future:
                del self._chat_waiting[key]
        return _typed(reply, answer_type, check)

    def _received(self, data: bytes) -> None:
        """Handle one read of the socket: every whole frame in it, in order."""
        if self._closed:
            return
        try:
            for frame in self._decoder.feed(data):
                self._dispatch(frame)
        except FramingError as exc:
            reason = f"server stream unreadable: {exc}"
            logger.warning("< %s", reason)
            self._shut(reason)
        except Exception:
            reason = "client reader failed"
            logger.exception("< %s", reason)
            self._shut(reason)

    def _lost(self, exc: Exception | None) -> None:
        """The connection ended (``_Stream.connection_lost``)."""
        self._shut("connection closed by the server" if exc is None else f"connection lost: {exc}")

    def _dispatch(self, frame: bytes) -> None:
        try:
            message = decode_server_message(frame)
        except InvalidMessage as exc:
            # Like the classic client, skip what we do not understand (newer extensions).
            logger.debug("< skipped frame: %s", exc)
            return
        kind = type(message)
        if isinstance(message, OneChat | GroupChat):
            if self._accept_push(message):
                self._event(message)
            return
        if kind in _CHAT_ACKS:
            assert isinstance(message, OneChatAck | GroupChatAck)
            if message.ref is not None:
                chat_future = self._chat_waiting.pop((_CHAT_ACKS[kind], message.ref), None)
                if chat_future is not None:
                    if not chat_future.done():
                        chat_future.set_result(message)
                    return
            self._event(message)
            return
        key = message.req if isinstance(message, Error) else _ANSWERS.get(kind)
        if key is not None:
            if isinstance(message, Error) and key in _CHAT_ACKS.values():
                if self._resolve_oldest_chat(key, message):
                    return
            else:
                waiters = self._waiting.get(key)
                if waiters:
                    future, on_answer = waiters.popleft()
                    if on_answer is not None:  # even for a caller that gave up
                        on_answer(message)
                    if not future.done():  # a cancelled caller still consumes its answer
                        future.set_result(message)
                    return
        self._event(message)

    def _event(self, message: ServerMessage | None) -> None:
        """Hand a push, an unsolicited answer or the end (None) to the listener, else queue it."""
        if self._listener is not None:
            self._listener(message)
        else:
            self._events.put_nowait(message)

    def _start_session(
        self, device: str | None, after: int | None, auto_ack: bool, cursor: int | None
    ) -> None:
        """A login succeeded: start (or not) a device session at the server's ``cursor``."""
        if device is None or cursor is None:
            # A classic session, or a server without acknowledged delivery.
            self._acking = False
            return
        if device != self._device:
            self._cursor = self._acked = None
            self._last_mid = None
        self._device = device
        self._acking = True
        self._auto_ack = auto_ack
        # The server resumes after max(acknowledged, after): everything up to the
        # answer's cursor is the device's already, and so is what we passed on.
        self._acked = cursor
        self._cursor = max(c for c in (cursor, after, self._cursor) if c is not None)
        if self._cursor > cursor:
            self._schedule_ack()

    def _accept_push(self, push: OneChat | GroupChat) -> bool:
        """Whether to pass a chat push on; tracks the cursor of device sessions."""
        cursor = push.cursor
        if not self._acking or cursor is None:
            return True
        if self._cursor is not None and cursor <= self._cursor:
            if self.classic and cursor == self._cursor and push.mid == self._last_mid:
                return True  # a further part of a push split for a classic frame
            self.duplicates_dropped += 1
            return False
        self._cursor = cursor
        self._last_mid = push.mid
        self._schedule_ack()
        return True

    def _schedule_ack(self) -> None:
        if self._auto_ack and not self._ack_scheduled:
            self._ack_scheduled = True
            self._loop.call_soon(self._flush_ack)

    def _flush_ack(self) -> None:
        """Write one ``Ack`` for everything passed on since the last one (no drain)."""
        self._ack_scheduled = False
        if self._closed or self._transport.is_closing():
            return
        if not self._acking or not self._auto_ack or self._cursor is None:
            return
        if self._acked is not None and self._cursor <= self._acked:
            return
        self._acked = self._cursor
        self.acks_sent += 1
        # A few bytes per read at most: written without waiting for the drain.
        self._transport.write(encode(Ack(cursor=self._cursor)) + self._terminator)

    def _resolve_oldest_chat(self, msgid: int, error: Error) -> bool:
        for key, future in self._chat_waiting.items():
            if key[0] == msgid:
                del self._chat_waiting[key]
                if not future.done():
                    future.set_result(error)
                return True
        return False

    def _shut(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._acking = False
        self._transport.close()
        failure = ConnectionError(reason)
        for waiters in self._waiting.values():
            for future, _on_answer in waiters:
                if not future.done():
                    future.set_exception(failure)
        self._waiting.clear()
        for future in self._chat_waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._chat_waiting.clear()
        self._event(None)


class _Stream(asyncio.Protocol):
    """A client's connection: hands each read and its end over as they happen, paces writes.

    Reads that come before ``attach`` (between the connection's start and
    ``ChatClient.__init__``) are kept and handed over by it, and so is an end.
    """

    def __init__(self) -> None:
        self._received: Callable[[bytes], None] | None = None
        self._lost: Callable[[Exception | None], None] | None = None
        self._early: list[bytes] = []
        self._ended = False
        self._end: Exception | None = None
        self._paused = False
        self._waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] | None = None

    def attach(
        self, received: Callable[[bytes], None], lost: Callable[[Exception | None], None]
    ) -> None:
        """Hand each read to ``received`` and the end to ``lost``, from the first read on."""
        self._received = received
        self._lost = lost
        early, self._early = self._early, []
        for data in early:
            received(data)
        if self._ended:
            lost(self._end)

    async def writable(self) -> None:
        """Return once the transport takes more (at once unless it paused writing).

        Raises:
            ConnectionError: The connection has ended.
        """
        if self._ended:
            raise ConnectionError("connection lost")
        if self._paused:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def closed(self) -> None:
        """Return once the connection has ended."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._received is None:
            self._early.append(data)
        else:
            self._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._end = exc
        self._wake(ConnectionError(f"connection lost: {exc}" if exc else "connection lost"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._lost is not None:
            self._lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def _wake(self, failure: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)


def _discard(future: asyncio.Future[Message]) -> None:
    """Give up a request's future that nobody will await (its request was not sent whole).

    A result or failure already set (the connection ended meanwhile) is read, so
    that asyncio does not report a "never retrieved" exception.
    """
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _errmsg(answer: Answer) -> str:
    if answer.errmsg:
        return answer.errmsg
    try:
        return ErrorCode(answer.errno).name.lower().replace("_", " ")
    except ValueError:
        return f"error {answer.errno}"


def _typed(reply: Message, answer_type: type[_A], check: bool) -> _A:
    if isinstance(reply, Error):
        reply = answer_type(errno=reply.errno, errmsg=reply.errmsg)
    if not isinstance(reply, answer_type):  # pragma: no cover - the dispatch tables forbid it
        raise TypeError(f"expected {answer_type.__name__}, got {type(reply).__name__}")
    if check and reply.errno != 0:
        raise ChatClientError(reply.errno, _errmsg(reply), reply)
    return reply
