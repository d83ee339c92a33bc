"""Raw wire peers for integration tests that must decide when a client reads.

``Peer`` speaks the protocol directly over one socket (NDJSON or classic NUL
frames; optionally a device that acknowledges), reads only when told to, and
records what it received; ``Net`` (fixture ``net``) owns a test's peers and
closes them. ``tally`` compares received message keys (``<sender>:<index>``
at the start of each text) with the accepted ones: duplicates, missing,
unexpected, reordered per sender.
"""

import asyncio
import contextlib
import itertools
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pytest

from tests.support.classic import PASSWORD
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis import RedisServer
from tests.support.timing import seconds

Frame = dict[str, Any]
_T = TypeVar("_T")

#: The bound of every wait on a condition, unless a test says otherwise.
WAIT = seconds(30)
#: How long a settled session is watched for anything more (duplicates come late).
QUIET = seconds(0.5)
#: Flood limits out of the way: these tests are the load.
LOAD_ENV: Mapping[str, str] = {
    "CLUSTERCHAT_MAX_RATE": "1000000",
    "CLUSTERCHAT_MAX_BURST": "1000000",
}
#: An acking peer acknowledges every this many pushes (and when asked).
ACK_EVERY = 64

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()
#: Which request an answer answers (chat acks are matched by ``ref`` instead).
_ANSWERS = {2: 1, 5: 4, 103: 3, 107: 7, 108: 8, 109: 9, 121: 120}
_PUSHES = (6, 10)
_CHAT_ACKS = (106, 110)
TCP_ESTABLISHED = 1


# --- a raw peer ------------------------------------------------------------------------


class Peer:
    """One TCP connection to a node, NDJSON or NUL-terminated (classic), read on demand.

    While ``reading`` (``resume()``; ``pause()`` stops), a task reads the socket
    and files each frame: pushes (6/10, and the ``offlinemsg`` entries of a login
    answer, in stream order) into ``keys``/``mids``/``cursors``; chat acks by
    ``ref`` into ``acks``; other answers to the request waiting for them. An
    acking peer (logged in with a ``device``) acknowledges every ``ACK_EVERY``
    pushes.

    Attributes:
        name: For messages.
        keys: The key of every push received, in order (repeats included).
        mids: Their ``mid``.
        cursors: Their ``cursor`` (None when the push has none).
        seen: The distinct keys received.
        acks: Chat acks received, by ``ref``.
        sent: Chat messages sent with a ``ref``: ref -> key.
        login_answer: The last login answer.
        device: Whether this session opted in to acknowledged delivery.
        last_cursor: The login answer's cursor, then the last push's.
        acked: The last cursor acknowledged.
        closed: The node closed (or reset) the connection.
    """

    def __init__(self, sock: socket.socket, *, nul: bool, name: str) -> None:
        self.sock = sock
        self.nul = nul
        self.name = name
        self._sep = b"\0" if nul else b"\n"
        self._pending = b""
        self.keys: list[str] = []
        self.mids: list[str | None] = []
        self.cursors: list[int | None] = []
        self.seen: set[str] = set()
        self.acks: dict[int, Frame] = {}
        self.sent: dict[int, str] = {}
        self.other: list[Frame] = []
        self.login_answer: Frame | None = None
        self.device = False
        self.last_cursor: int | None = None
        self.acked: int | None = None
        self.closed = False
        self._refs = itertools.count(1)
        self._waiting: dict[int, deque[asyncio.Future[Frame]]] = {}
        self._chat_waiting: dict[int, asyncio.Future[Frame]] = {}
        self._changed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- reading -----------------------------------------------------------------------

    def resume(self) -> None:
        """Read the socket (again)."""
        if self._task is None and not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def pause(self) -> None:
        """Stop reading: the socket is left alone until ``resume()``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.sock, 1 << 20)
                if not data:
                    break
                self._feed(data)
                if self.device and self._ack_due():
                    await self.ack()
        except OSError:
            pass  # reset by the node: closed as well
        self.closed = True
        self._task = None
        failure = ConnectionError(f"{self.name}: connection closed")
        for futures in [*self._waiting.values(), [*self._chat_waiting.values()]]:
            for future in futures:
                if not future.done():
                    future.set_exception(failure)
        self._changed.set()

    def _ack_due(self) -> bool:
        if self.last_cursor is None:
            return False
        return self.acked is None or self.last_cursor - self.acked >= ACK_EVERY

    def _feed(self, data: bytes) -> None:
        *frames, self._pending = (self._pending + data).split(self._sep)
        for raw in frames:
            if raw:
                self._file(_decode.decode(raw))
        self._changed.set()

    def _file(self, frame: Frame) -> None:
        msgid = frame.get("msgid")
        if msgid in _PUSHES:
            self._push(frame)
            return
        ref = frame.get("ref")
        if msgid in _CHAT_ACKS and isinstance(ref, int) and ref in self.sent:
            self.acks[ref] = frame
            future = self._chat_waiting.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if msgid == 2:
            self.login_answer = frame
            if isinstance(frame.get("cursor"), int):
                self.last_cursor = frame["cursor"]
            for text in frame.get("offlinemsg", []):
                self._push(_decode.decode(text))
        request = frame.get("req") if msgid == 100 else _ANSWERS.get(msgid or 0)
        waiters = self._waiting.get(request) if isinstance(request, int) else None
        if waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(frame)
            return
        self.other.append(frame)

    def _push(self, frame: Frame) -> None:
        key = str(frame.get("msg", "")).partition("|")[0]
        cursor = frame.get("cursor")
        self.keys.append(key)
        self.mids.append(frame.get("mid"))
        self.cursors.append(cursor if isinstance(cursor, int) else None)
        self.seen.add(key)
        if isinstance(cursor, int):
            self.last_cursor = cursor

    async def until(self, condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
        """Wait until ``condition()`` holds.

        Raises:
            AssertionError: It did not hold within ``within`` seconds, or the
                connection closed without it holding.
        """
        try:
            async with asyncio.timeout(within):
                while not condition():
                    if self.closed:
                        raise AssertionError(
                            f"{self.name}: connection closed while waiting for {what}"
                            f" ({len(self.keys)} pushes received)"
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: timed out after {within:.0f}s waiting for {what}"
                f" ({len(self.keys)} pushes, {len(self.seen)} distinct, {len(self.acks)} acks)"
            ) from None

    # -- sending -----------------------------------------------------------------------

    async def send(self, *frames: Frame) -> None:
        """Write frames back to back in one go (pipelined)."""
        data = b"".join(_encode.encode(frame) + self._sep for frame in frames)
        async with self._send_lock, asyncio.timeout(WAIT):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def request(self, frame: Frame, within: float = WAIT) -> Frame:
        """Send a request and return its answer (or the Error about it)."""
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(int(frame["msgid"]), deque()).append(future)
        await self.send(frame)
        async with asyncio.timeout(within):
            return await future

    async def chat(
        self, to: int, text: str, *, cid: str | None = None, group: bool = False
    ) -> Frame:
        """Send one chat message with a fresh ``ref`` (and ``cid``); return its ack."""
        ref = next(self._refs)
        frame: Frame = {"msgid": 10, "groupid": to} if group else {"msgid": 6, "toid": to}
        frame.update(msg=text, ref=ref)
        if cid is not None:
            frame["cid"] = cid
        self.sent[ref] = text.partition("|")[0]
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._chat_waiting[ref] = future
        await self.send(frame)
        async with asyncio.timeout(WAIT):
            return await future

    async def stream(
        self,
        to: int,
        keys: Sequence[str],
        *,
        pad: int = 0,
        batch: int = 100,
        pause: float = 0.0,
        window: int | None = None,
    ) -> None:
        """Send one-to-one messages ``key|<pad x's>`` with refs, ``batch`` per write.

        With ``window``, at most that many stay unacknowledged (a pipelining client).
        """
        padding = "x" * pad
        for start in range(0, len(keys), batch):
            if window is not None:
                await self.until(
                    lambda: len(self.sent) - len(self.acks) <= window - batch, "window room"
                )
            frames = []
            for key in keys[start : start + batch]:
                ref = next(self._refs)
                self.sent[ref] = key
                frames.append({"msgid": 6, "toid": to, "msg": f"{key}|{padding}", "ref": ref})
            await self.send(*frames)
            if pause:
                await asyncio.sleep(pause)

    async def until_acked(self, within: float = WAIT) -> None:
        """Wait for the ack of every chat message sent with a ref."""
        await self.until(lambda: len(self.acks) >= len(self.sent), "every chat ack", within)

    def accepted(self) -> list[str]:
        """Keys of the messages acknowledged with errno 0, in send order."""
        return [self.sent[ref] for ref in sorted(self.acks) if self.acks[ref].get("errno") == 0]

    def refused(self) -> list[Frame]:
        """Acks with an errno other than 0."""
        return [ack for ack in self.acks.values() if ack.get("errno") != 0]

    async def ack(self) -> None:
        """Acknowledge everything received so far (acking sessions only)."""
        if self.last_cursor is None or self.closed:
            return
        cursor = self.last_cursor
        with contextlib.suppress(OSError, TimeoutError):
            await self.send({"msgid": 130, "cursor": cursor})
            self.acked = cursor

    async def logout(self) -> None:
        """Acknowledge what was received, log out, and read up to the logout answer."""
        if self.device:
            await self.ack()
        answer = await self.request({"msgid": 3})
        assert answer.get("errno") == 0, f"{self.name}: logout answered {answer}"

    async def receive(self, count: int, within: float = WAIT) -> None:
        """Wait for ``count`` distinct messages (or the end), then ``settle()``.

        Never fails on a shortfall: the test's checks judge what came.
        """
        with contextlib.suppress(AssertionError):
            await self.until(lambda: len(self.seen) >= count, f"{count} messages", within)
        await self.settle()

    async def receive_keys(self, wanted: Callable[[], set[str]], within: float = WAIT) -> None:
        """Like ``receive``, until every key of ``wanted()`` was seen by this peer."""
        with contextlib.suppress(AssertionError):
            await self.until(lambda: wanted() <= self.seen, "the wanted messages", within)
        await self.settle()

    async def until_closed(self, within: float = WAIT) -> None:
        """Wait until the node closed the connection (reading what comes until then)."""
        self.resume()
        with contextlib.suppress(AssertionError):
            await self.until(lambda: self.closed, "the connection to end", within)
        assert self.closed, f"{self.name}: the node did not close the connection"

    async def settle(self) -> None:
        """Round-trip a ping, then watch ``QUIET`` seconds for anything more."""
        if not self.closed:
            answer = await self.request({"msgid": 120, "ref": 0})
            assert answer.get("msgid") == 121, answer
        await asyncio.sleep(QUIET)

    def tcp_state(self) -> int:
        """The kernel's TCP state of this socket (1: established)."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return info[0]

    async def close(self) -> None:
        await self.pause()
        self.sock.close()


class Net:
    """Opens peers for one test and closes all of them at its end."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self._names = itertools.count(1)

    def spawn(self, work: Coroutine[Any, Any, _T]) -> "asyncio.Task[_T]":
        """Run ``work`` in the background; cancelled at teardown if still running."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.append(task)
        return task

    async def connect(
        self,
        node: NodeHandle,
        *,
        nul: bool = False,
        rcvbuf: int | None = None,
        source: str | None = None,
    ) -> Peer:
        """A new connection, reading.

        Args:
            node: Where to.
            nul: Speak the classic (NUL-terminated) framing.
            rcvbuf: A small SO_RCVBUF, set before connecting.
            source: The local address to connect from (another 127.x.y.z).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.setblocking(False)
        peer = Peer(sock, nul=nul, name=f"peer-{next(self._names)}@{node.port}")
        self.peers.append(peer)
        async with asyncio.timeout(WAIT):
            await asyncio.get_running_loop().sock_connect(sock, (node.host, node.port))
        peer.resume()
        return peer

    async def register(self, node: NodeHandle, *names: str) -> list[int]:
        """Register users over one connection; their ids, in order."""
        peer = await self.connect(node)
        ids = []
        for name in names:
            answer = await peer.request({"msgid": 4, "name": name, "password": PASSWORD})
            assert answer.get("errno") == 0, answer
            ids.append(int(answer["id"]))
        await peer.close()
        return ids

    async def login(
        self,
        node: NodeHandle,
        user: int,
        *,
        device: str | None = None,
        after: int | None = None,
        nul: bool = False,
        rcvbuf: int | None = None,
        source: str | None = None,
    ) -> Peer:
        """A new connection logged in as ``user`` (an acking session if ``device`` is given)."""
        peer = await self.connect(node, nul=nul, rcvbuf=rcvbuf, source=source)
        frame: Frame = {"msgid": 1, "id": user, "password": PASSWORD}
        if device is not None:
            frame["device"] = device
            peer.device = True
        if after is not None:
            frame["after"] = after
        answer = await peer.request(frame)
        assert answer.get("errno") == 0, f"{peer.name}: login answered {answer}"
        return peer

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for peer in self.peers:
            await peer.close()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    """Peers for this test; every socket is closed at teardown."""
    peers = Net()
    yield peers
    await peers.close()


# --- checks ----------------------------------------------------------------------------


@dataclass
class Tally:
    """How a stream of received keys compares with the accepted ones."""

    received: int
    duplicates: list[str]
    missing: list[str]
    unexpected: list[str]
    reordered: list[str]

    @property
    def once_in_order(self) -> bool:
        """No duplicates and nothing reordered (for a session that may see a part only)."""
        return not (self.duplicates or self.reordered)

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.missing or self.unexpected or self.reordered)

    def __str__(self) -> str:
        def some(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:5]}{'...' if len(keys) > 5 else ''}"

        return (
            f"received {self.received}, duplicates {some(self.duplicates)}, missing"
            f" {some(self.missing)}, unexpected {some(self.unexpected)}, reordered"
            f" {some(self.reordered)}"
        )


def tally(got: Sequence[str], accepted: Sequence[str]) -> Tally:
    """Duplicates, missing, unexpected keys, and keys received after a later one of
    the same sender."""
    counts = Counter(got)
    wanted = set(accepted)
    reordered: list[str] = []
    last: dict[str, int] = {}
    seen: set[str] = set()
    for key in got:
        if key in seen:
            continue
        seen.add(key)
        sender, _, index = key.partition(":")
        if int(index) < last.get(sender, -1):
            reordered.append(key)
        else:
            last[sender] = int(index)
    return Tally(
        received=len(got),
        duplicates=[key for key, n in counts.items() if n > 1],
        missing=[key for key in accepted if key not in counts],
        unexpected=[key for key in counts if key not in wanted],
        reordered=reordered,
    )


def session_problems(peer: Peer, *, after: int | None = None) -> list[str]:
    """What an acking session did against the protocol: answer, cursors, resume point."""
    problems: list[str] = []
    answer = peer.login_answer or {}
    start = answer.get("cursor")
    if not isinstance(start, int):
        return [f"{peer.name}: login answer without a cursor: {answer}"]
    if answer.get("offlinemsg"):
        problems.append(f"{peer.name}: acking session got offlinemsg")
    if after is not None and start != after:
        problems.append(f"{peer.name}: logged in with after={after}, resumes after {start}")
    expected = list(range(start + 1, start + 1 + len(peer.cursors)))
    if peer.cursors != expected:
        wrong = next(
            i for i, (a, b) in enumerate(zip(peer.cursors, expected, strict=True)) if a != b
        )
        problems.append(
            f"{peer.name}: push {wrong} has cursor {peer.cursors[wrong]}, expected"
            f" {expected[wrong]} (cursors must follow the login cursor {start} one by one)"
        )
    return problems


def keys(sender: str, count: int, start: int = 0) -> list[str]:
    return [f"{sender}:{index:06d}" for index in range(start, start + count)]


def first_difference(got: Sequence[str], expected: Sequence[str]) -> str:
    for index, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"at {index}: got {list(got[index : index + 3])}, expected {b}"
    return f"lengths {len(got)} vs {len(expected)}"


async def start_nodes(
    node_factory: NodeFactory,
    redis: RedisServer,
    count: int,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[NodeHandle]:
    """``count`` nodes n1, n2... joined by ``redis``, flood limits raised (and ``env`` added)."""

    def start(number: int) -> NodeHandle:
        args = ["--redis", redis.url, "--node-id", f"n{number}", *extra_args]
        return node_factory(extra_args=args, env={**LOAD_ENV, **(env or {})})

    return [await asyncio.to_thread(start, number) for number in range(1, count + 1)]
