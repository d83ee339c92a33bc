"""Every accepted message reaches each session once, in order (issue 8), on real nodes.

One test per failure measured on main before the durable per-user log: a slow
reader cut and robbed, a stalled reader given up on, a burst duplicated by the
512-id window, logins racing catch-ups and bus restores, live messages
overtaking stored ones after an outage, Redis cutting a stalled node's
subscriber, a recipient node SIGKILLed, idempotent retries by ``cid``, and a
classic client across a SIGTERM.

The peers here speak the wire protocol directly (``Peer``): a test decides
when a connection reads, so "a client that stops reading" is exactly that (its
socket is not read; with a small ``SO_RCVBUF``, the kernel holds little).
Every message text starts with a key ``<sender>:<index>`` that the checks use:
duplicates, missing, and order per sender.
"""

import asyncio
import contextlib
import itertools
import signal
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import pytest

from clusterchat.cluster import processes
from tests.support.classic import PASSWORD
from tests.support.node import NodeFactory, NodeHandle
from tests.support.processes import memory_kib
from tests.support.redis import RedisFactory, RedisServer
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

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
_TCP_ESTABLISHED = 1


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

    async def request(self, frame: Frame) -> Frame:
        """Send a request and return its answer (or the Error about it)."""
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(int(frame["msgid"]), deque()).append(future)
        await self.send(frame)
        async with asyncio.timeout(WAIT):
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
        self, node: NodeHandle, *, nul: bool = False, rcvbuf: int | None = None
    ) -> Peer:
        """A new connection, reading. ``rcvbuf`` sets a small SO_RCVBUF before connecting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
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
    ) -> Peer:
        """A new connection logged in as ``user`` (an acking session if ``device`` is given)."""
        peer = await self.connect(node, nul=nul, rcvbuf=rcvbuf)
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
) -> list[NodeHandle]:
    """``count`` nodes n1, n2... joined by ``redis``, flood limits raised."""

    def start(number: int) -> NodeHandle:
        args = ["--redis", redis.url, "--node-id", f"n{number}", *extra_args]
        return node_factory(extra_args=args, env=LOAD_ENV)

    return [await asyncio.to_thread(start, number) for number in range(1, count + 1)]


# --- 1. a reader that stops reading ----------------------------------------------------

FLOOD_SENDERS = 4
FLOOD_EACH = 25_000
FLOOD_PAD = 1000
FLOOD_WINDOW = 500
#: Peak VmRSS growth allowed over the node's VmRSS before the flood. The backlog
#: for the stopped reader reaches ~99,000 x ~1.1 KB = ~110 MB; a node that held it
#: (as bytes, or worse as objects) would grow by at least that. A node that leaves
#: it in the log and writes as the socket drains holds bounded buffers only: a
#: socket's worth of output, a log page, a group-commit batch, and what the senders
#: have in flight. The senders pipeline with a window of FLOOD_WINDOW unacknowledged
#: messages each (as a real client would), so that the node's intake queue (bounded
#: by count, 20,000 messages, not by the slow reader) does not mask what this test
#: is about. Measured on the log design: ~26 MiB. 48 MiB is under half the backlog.
FLOOD_GROWTH_BOUND_KIB = 48 * 1024


async def test_reader_that_stops_then_reads_gets_100k_once_in_order_memory_bounded(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """A reader stops, then reads again: 100,000 messages each once, in order; node RSS bounded."""
    (node,) = await start_nodes(node_factory, redis_server, 1, ["--stall-timeout", "600"])
    names = ["reader", *(f"s{i}" for i in range(FLOOD_SENDERS))]
    reader_id, *sender_ids = await net.register(node, *names)
    reader = await net.login(node, reader_id, rcvbuf=64 * 1024)
    senders = [await net.login(node, user) for user in sender_ids]
    plan = [keys(f"s{i}", FLOOD_EACH) for i in range(FLOOD_SENDERS)]
    baseline = memory_kib(node.child.pid)
    assert baseline is not None

    flood = [
        net.spawn(s.stream(reader_id, k, pad=FLOOD_PAD, batch=250, window=FLOOD_WINDOW))
        for s, k in zip(senders, plan, strict=True)
    ]
    with contextlib.suppress(AssertionError):  # judged below, with the full tally
        await reader.until(lambda: len(reader.keys) >= 1000, "the first 1,000 live")
    await reader.pause()  # stops reading: the kernel buffers fill, then the node holds
    stopped_at = len(reader.keys)
    await asyncio.gather(*flood)
    for sender in senders:
        await sender.until_acked(within=seconds(90))
    reader.resume()
    total = FLOOD_SENDERS * FLOOD_EACH
    await reader.receive(total, seconds(60))
    peak = memory_kib(node.child.pid, "VmHWM")
    assert peak is not None

    accepted = [key for sender in senders for key in sender.accepted()]
    assert len(accepted) == total, [s.refused()[:3] for s in senders]
    result = tally(reader.keys, accepted)
    assert result.clean, f"reader (stopped after {stopped_at}): {result}"
    assert not reader.closed, "the node cut the reader"
    assert len(set(reader.mids)) == total
    growth = peak - baseline
    print(f"reader stopped after {stopped_at}; node VmRSS {baseline} KiB, peak {peak} KiB")
    assert growth <= FLOOD_GROWTH_BOUND_KIB, (
        f"node VmRSS grew by {growth / 1024:.1f} MiB (from {baseline / 1024:.1f} MiB,"
        f" peak {peak / 1024:.1f} MiB) for a backlog of ~110 MB"
    )


# --- 2. a reader the node gives up on --------------------------------------------------

STALL_COUNT = 8000
STALL_PAD = 1000
#: The most message bytes a connection the node gave up on may lose: what sat in
#: kernel buffers (the node's bounded SO_SNDBUF, our 4 KiB SO_RCVBUF, loopback in
#: flight). Main lost its whole 4 MiB outbound queue.
KERNEL_WINDOW_BYTES = 1024 * 1024


async def test_reader_given_up_on_gets_the_rest_at_next_login(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """A reader cut for stalling gets at next login all but a small run right after what it read."""
    (node,) = await start_nodes(node_factory, redis_server, 1, ["--stall-timeout", "1"])
    reader_id, sender_id = await net.register(node, "reader", "sender")
    first = await net.login(node, reader_id, rcvbuf=4096)
    sender = await net.login(node, sender_id)
    plan = keys("s0", STALL_COUNT)
    await sender.stream(reader_id, plan[:100], pad=STALL_PAD)
    await first.until(lambda: len(first.keys) >= 100, "the first 100 live")
    await first.pause()
    await sender.stream(reader_id, plan[100:], pad=STALL_PAD, batch=200)
    await sender.until_acked(within=seconds(60))
    # The node gives up after 1 s without progress; an abort shows at once in the TCP state.
    for _ in range(int(seconds(5) / 0.05)):
        if first.tcp_state() != _TCP_ESTABLISHED:
            break
        await asyncio.sleep(0.05)
    await first.until_closed()  # reads what the kernel still holds for us, then the end

    second = await net.login(node, reader_id)
    await second.receive_keys(lambda: {plan[-1]})

    accepted = sender.accepted()
    assert accepted == plan, sender.refused()[:3]
    before, after = tally(first.keys, []), tally(second.keys, [])
    assert before.once_in_order, f"first session: {before}"
    assert after.once_in_order, f"second session: {after}"
    position = {key: index for index, key in enumerate(plan)}
    read = max((position[key] for key in first.seen), default=-1)
    missing = [key for key in plan if key not in first.seen and key not in second.seen]
    run = plan[read + 1 : read + 1 + len(missing)]
    lost_bytes = len(missing) * (len(plan[0]) + 1 + STALL_PAD)
    print(
        f"before the cut {len(first.keys)} (last {plan[read]}), at next login"
        f" {len(second.keys)}, lost {len(missing)} ({lost_bytes} bytes)"
    )
    assert missing == run, (
        f"{len(missing)} missing, not one run right after the last one read"
        f" ({plan[read]}): {missing[:3]}...{missing[-3:]}"
    )
    assert lost_bytes <= KERNEL_WINDOW_BYTES, (
        f"{len(missing)} messages ({lost_bytes} bytes) lost after {plan[read]}"
        f" ({len(first.keys)} read before the cut, {len(second.keys)} at next login)"
    )


# --- 3. a burst from the recipient's own node ------------------------------------------

BURST_SENDERS = 10
BURST_EACH = 1000


async def test_burst_from_recipients_own_node_arrives_once_each(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """10,000 messages burst from senders on the recipient's node arrive once each, in order."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    names = ["reader", *(f"s{i}" for i in range(BURST_SENDERS))]
    reader_id, *sender_ids = await net.register(n1, *names)
    local = await net.login(n1, reader_id)
    remote = await net.login(n2, reader_id, device="laptop-1")
    senders = [await net.login(n1, user) for user in sender_ids]
    plan = [keys(f"s{i}", BURST_EACH) for i in range(BURST_SENDERS)]
    await asyncio.gather(
        *(s.stream(reader_id, k, batch=250) for s, k in zip(senders, plan, strict=True))
    )
    for sender in senders:
        await sender.until_acked()
    total = BURST_SENDERS * BURST_EACH
    await asyncio.gather(local.receive(total), remote.receive(total))

    accepted = [key for sender in senders for key in sender.accepted()]
    assert len(accepted) == total
    on_n1, on_n2 = tally(local.keys, accepted), tally(remote.keys, accepted)
    assert on_n1.clean, f"session on the senders' node: {on_n1}"
    assert on_n2.clean, f"acking session on the other node: {on_n2}"
    assert session_problems(remote) == []


# --- 4. logins during catch-ups and bus restores ----------------------------------------


async def test_logins_during_catchups_and_bus_restores_see_nothing_twice(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """A device and a classic client log in and out while messages stream and Redis restarts."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    sender_id, target = await net.register(n1, "sender", "target")
    sender = await net.login(n1, sender_id)
    plan = keys("s0", 2400)
    redis_up = asyncio.Event()
    redis_up.set()
    streaming = net.spawn(sender.stream(target, plan, batch=20, pause=0.05))

    async def restarts() -> None:
        for crash in (False, True):
            await asyncio.sleep(1.5)
            redis_up.clear()
            await asyncio.to_thread(redis_server.kill if crash else redis_server.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis_server.start)
            redis_up.set()

    device_sessions: list[Peer] = []
    device_after: list[int | None] = []
    classic_sessions: list[Peer] = []

    def complete() -> bool:
        return streaming.done() and len(sender.acks) >= len(plan)

    def covered(sessions: list[Peer]) -> Callable[[], bool]:
        def check() -> bool:
            have = set().union(*(p.seen for p in sessions))
            return complete() and set(sender.accepted()) <= have

        return check

    async def sessions(*, device: bool) -> None:
        after: int | None = None
        mine = device_sessions if device else classic_sessions
        for number in itertools.count():
            await redis_up.wait()
            node = (n2, n1)[number % 2]
            finishing = complete()
            if device:
                peer = await net.login(node, target, device="phone-1", after=after)
                device_after.append(after)
            else:
                peer = await net.login(node, target, nul=True)
            mine.append(peer)
            if finishing:
                await peer.until(covered(mine), "every accepted message", seconds(40))
                await peer.settle()
            else:
                await asyncio.sleep(
                    (0.3, 0.5, 0.8)[number % 3] if device else 0.25 + 0.1 * (number % 4)
                )
            await peer.logout()
            await peer.close()
            after = peer.last_cursor if peer.last_cursor is not None else after
            if finishing:
                return
            await asyncio.sleep(0.2 if device else 0.35)  # offline: a backlog builds up

    async with asyncio.timeout(seconds(90)):
        await asyncio.gather(restarts(), sessions(device=True), sessions(device=False))
        await sender.until_acked()

    accepted = sender.accepted()
    print(
        f"{len(device_sessions)} device sessions, {len(classic_sessions)} classic sessions;"
        f" classic pushes {sum(len(p.keys) for p in classic_sessions)} for {len(accepted)}"
    )
    assert accepted == plan, sender.refused()[:3]
    for peer in classic_sessions + device_sessions:
        result = tally(peer.keys, [])
        assert result.once_in_order, f"{peer.name}: {result}"
    classic = tally([k for p in classic_sessions for k in p.keys], accepted)
    assert not classic.missing, f"classic sessions overall: {classic}"
    device = tally([k for p in device_sessions for k in p.keys], accepted)
    assert device.clean, f"device sessions overall ({len(device_sessions)}): {device}"
    problems = [
        problem
        for peer, after in zip(device_sessions, device_after, strict=True)
        for problem in session_problems(peer, after=after)
    ]
    assert problems == []


# --- 5. an outage's messages are not overtaken -------------------------------------------


async def test_messages_accepted_during_redis_outage_are_not_overtaken(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """Messages accepted while Redis is down arrive before those sent after it is back."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    sender_id, target = await net.register(n1, "sender", "target")
    device = await net.login(n2, target, device="phone-1")
    plain = await net.login(n2, target)
    sender = await net.login(n1, sender_id)
    plan = keys("s0", 2001)
    await sender.stream(target, plan[:1])
    await asyncio.gather(device.receive(1), plain.receive(1))

    await asyncio.to_thread(redis_server.stop)
    await sender.stream(target, plan[1:1001], batch=50)
    await sender.until_acked()
    await asyncio.to_thread(redis_server.start)
    # Live messages keep coming while node 2 reconnects and catches up (about 3 s).
    await sender.stream(target, plan[1001:], batch=10, pause=0.03)
    await sender.until_acked()
    await asyncio.gather(device.receive(len(plan)), plain.receive(len(plan)))

    assert sender.accepted() == plan, sender.refused()[:3]
    for peer in (device, plain):
        assert peer.keys == plan, f"{peer.name}: {tally(peer.keys, plan)}" + (
            f"; first difference {first_difference(peer.keys, plan)}"
        )
    assert session_problems(device) == []


# --- 6. Redis cuts a stalled node's subscriber ------------------------------------------


async def test_redis_cutting_a_stalled_nodes_subscriber_loses_nothing(
    node_factory: NodeFactory, redis_factory: RedisFactory, net: Net
) -> None:
    """Redis cuts a SIGSTOPped node's subscriber: all arrive once, in order."""
    redis = await asyncio.to_thread(
        redis_factory, "--client-output-buffer-limit", "pubsub 64kb 32kb 1"
    )
    n1, n2 = await start_nodes(node_factory, redis, 2)
    sender_id, target = await net.register(n1, "sender", "target")
    device = await net.login(n2, target, device="phone-1")
    plain = await net.login(n2, target)
    sender = await net.login(n1, sender_id)
    plan = keys("s0", 3000)
    await sender.stream(target, plan[:200], pad=400, batch=20, pause=0.02)
    await device.until(lambda: len(device.seen) >= 200, "the first 200 live")

    # About 4 MB for node 2 while it is frozen: more than the kernel buffers between
    # Redis and node 2 absorb, so Redis's output buffer for its subscriber overflows.
    processes.pause(n2.child)
    try:
        await sender.stream(target, plan[200:2200], pad=2000, batch=20, pause=0.02)
    finally:
        processes.resume(n2.child)
    await sender.stream(target, plan[2200:], pad=400, batch=20, pause=0.02)
    await sender.until_acked()
    await asyncio.gather(device.receive(len(plan)), plain.receive(len(plan)))

    assert redis.child is not None
    cuts = [
        line
        for line in redis.child.log_path.read_text().splitlines()
        if "output buffer limits" in line
    ]
    assert cuts, "Redis never cut node 2's subscriber: the scenario did not happen"
    assert sender.accepted() == plan, sender.refused()[:3]
    for peer in (device, plain):
        assert peer.keys == plan, f"{peer.name}: {tally(peer.keys, plan)}" + (
            f"; first difference {first_difference(peer.keys, plan)}"
        )
    assert session_problems(device) == []


# --- 7. the recipient's node is SIGKILLed ------------------------------------------------


async def test_recipient_node_sigkilled_everything_acknowledged_arrives_once(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """Recipient node SIGKILLed mid-stream: at next login elsewhere all acked arrive, none twice."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    sender_id, target = await net.register(n1, "sender", "target")
    before = await net.login(n2, target, device="phone-1")
    sender = await net.login(n1, sender_id)
    plan = keys("s0", 3000)
    streaming = net.spawn(sender.stream(target, plan, batch=20, pause=0.02))
    await before.until(lambda: len(before.keys) >= 800, "the first 800 live")
    await asyncio.to_thread(n2.stop, signal.SIGKILL)
    await before.until_closed()
    await streaming
    await sender.until_acked()

    resumed_after = before.last_cursor
    after = await net.login(n1, target, device="phone-1", after=resumed_after)
    accepted = sender.accepted()
    await after.receive_keys(lambda: set(accepted) - before.seen)

    print(f"before SIGKILL {len(before.keys)} (acked {before.acked}), after {len(after.keys)}")
    assert accepted == plan, sender.refused()[:3]
    both = before.keys + after.keys
    assert both == plan, f"{tally(both, plan)}; first difference {first_difference(both, plan)}"
    assert session_problems(before) == []
    assert session_problems(after, after=resumed_after) == []


# --- 8. idempotent retries ----------------------------------------------------------------


async def test_retries_with_the_same_cid_are_answered_alike_and_delivered_once(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """A cid sent again (also via another node) gets the same mid/seq/time and arrives once."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    alice, bob = await net.register(n1, "alice", "bob")
    reader = await net.login(n2, bob)
    writer = await net.login(n1, alice)
    group = await writer.request({"msgid": 8, "groupname": "retry", "groupdesc": "cid"})
    assert group.get("errno") == 0, group
    joined = await reader.request({"msgid": 9, "groupid": group["groupid"]})
    assert joined.get("errno") == 0, joined

    hello, to_all, bye = "a:000000|hello", "a:000001|to all", "a:000002|bye"
    first = await writer.chat(bob, hello, cid="cid-1")
    again = await writer.chat(bob, hello, cid="cid-1")
    group_first = await writer.chat(group["groupid"], to_all, cid="cid-2", group=True)
    group_again = await writer.chat(group["groupid"], to_all, cid="cid-2", group=True)
    await writer.close()  # the connection is lost; the client retries through another node
    retrier = await net.login(n2, alice)
    third = await retrier.chat(bob, hello, cid="cid-1")
    group_third = await retrier.chat(group["groupid"], to_all, cid="cid-2", group=True)
    last = await retrier.chat(bob, bye, cid="cid-3")
    await reader.receive_keys(lambda: {"a:000002"})

    assert reader.keys == ["a:000000", "a:000001", "a:000002"], reader.keys
    same = ("mid", "seq", "time")
    for original, retries in ((first, (again, third)), (group_first, (group_again, group_third))):
        assert original.get("errno") == 0, original
        assert isinstance(original.get("mid"), str), original
        assert isinstance(original.get("seq"), int), original
        assert isinstance(original.get("time"), str), original
        for retry in retries:
            assert retry.get("errno") == 0, retry
            assert {k: retry.get(k) for k in same} == {k: original[k] for k in same}, (
                original,
                retry,
            )
            assert retry.get("cid") == original.get("cid"), (original, retry)
    assert first.get("cid") == "cid-1", first
    assert again.get("ref") == first["ref"] + 1, again  # each answer carries its request's ref
    assert last.get("errno") == 0, last
    assert last.get("mid") != first["mid"], (first, last)
    assert isinstance(last.get("seq"), int), last
    assert last["seq"] > first["seq"], (first, last)


# --- 9. a classic client across a SIGTERM -------------------------------------------------


async def test_classic_client_across_sigterm_loses_nothing_and_sees_nothing_twice(
    node_factory: NodeFactory, redis_server: RedisServer, net: Net
) -> None:
    """A classic client's node is SIGTERMed mid-stream: the rest at next login, nothing twice."""
    n1, n2 = await start_nodes(node_factory, redis_server, 2)
    sender_id, target = await net.register(n1, "sender", "target")
    before = await net.login(n2, target, nul=True)
    sender = await net.login(n1, sender_id)
    plan = keys("s0", 2000)
    streaming = net.spawn(sender.stream(target, plan, pad=100, batch=20, pause=0.02))
    await before.until(lambda: len(before.keys) >= 600, "the first 600 live")
    status = await asyncio.to_thread(n2.stop, signal.SIGTERM)
    await before.until_closed()
    await streaming
    await sender.until_acked()

    after = await net.login(n1, target, nul=True)
    accepted = sender.accepted()
    await after.receive_keys(lambda: set(accepted) - before.seen)

    print(f"before SIGTERM {len(before.keys)}, at next login {len(after.keys)}")
    assert accepted == plan, sender.refused()[:3]
    first, second = tally(before.keys, []), tally(after.keys, [])
    assert first.once_in_order, f"before SIGTERM: {first}"
    assert second.once_in_order, f"at next login: {second}"
    overall = tally(before.keys + after.keys, plan)
    assert not overall.missing, f"overall: {overall}"
    assert not overall.unexpected, f"overall: {overall}"
    assert status == 0
