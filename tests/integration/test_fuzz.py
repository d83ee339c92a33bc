"""Hostile clients, fuzzed: random frame sequences from several connections at once.

From the issue on hostile clients: a Hypothesis state machine drives two live
nodes joined by Redis with random sequences of valid, invalid and truncated
frames from several connections at once (garbage, NULs in the middle of a
frame, frames too large or too deep, frames cut into pieces, pipelined
requests, connections that send a request and vanish at once). After every
sequence the node must still be running, no session and no subscription may be
left once every connection is closed, and no traceback may have been logged;
after the whole run the store passes SQLite's integrity checks.

Checked on the way, as each frame comes: every frame the node writes is a JSON
object with an integer ``msgid`` (a classic frame at most 1023 bytes with its
NUL), no answer says errno 50 (internal error), every well-formed request on a
clean connection gets its answer, a right password logs in and a wrong one
never does, and the node closes only connections that sent something that may
close them (more than 16 open brackets or 64 KiB since their last NUL), while
a frame too large or too deep is always followed by the close.

The nodes start once per test; the sequences share them (and their database).
Bounded in the suite by the Hypothesis profile "fuzz" (tests/conftest.py);
longer on demand::

    pytest -s -p no:cacheprovider tests/integration/test_fuzz.py --hypothesis-profile=fuzz-long

The counts of sequences, steps and frames are printed at the end (``-s``) and
added to the failure's message.
"""

import contextlib
import itertools
import json
import re
import select
import socket
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.defaults import SETTINGS
from tests.support.node import NodeFactory, NodeHandle
from tests.support.redis import RedisServer
from tests.support.timing import seconds
from tests.support.wire import LOAD_ENV
from tests.unit.protocol.strategies import json_values, jsonish_bytes, nesting, stream_bytes

pytestmark = pytest.mark.integration

Frame = dict[str, Any]

#: The profile this run uses: the one loaded with ``--hypothesis-profile`` when its
#: name starts with "fuzz", else the bounded "fuzz" (both in tests/conftest.py).
PROFILE = (
    settings.get_current_profile_name()
    if settings.get_current_profile_name().startswith("fuzz")
    else "fuzz"
)

NODE_IDS = ("n1", "n2")
PREFIX = SETTINGS.prefix
#: Connections open at once, at most.
SLOTS = 4
FRAME_LIMIT = SETTINGS.max_frame
DEPTH_LIMIT = SETTINGS.max_depth
CLASSIC_FRAME = 1023
MAX_ID = 2**31 - 1
PASSWORD = "fuzz-secret"
BASE_USERS = 4
#: How long a well-formed request on a clean connection may wait for its answer.
REPLY = seconds(5)
#: How long a frame too large or too deep may wait for the close.
CLOSE_WAIT = seconds(5)
#: How long sessions may take to go once every connection is closed.
SETTLE = seconds(10)
#: Socket timeout: the node reads nothing for this long while we write.
IO_TIMEOUT = seconds(5)
#: Flood and back-off limits out of the way: the fuzzer is one address and the load.
NODE_ENV = {
    **LOAD_ENV,
    "CLUSTERCHAT_LOGIN_ATTEMPTS": "1000000",
    "CLUSTERCHAT_LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
}
#: The answer type of each request (130, ACK, has none).
ANSWER = {1: 2, 3: 103, 4: 5, 6: 106, 7: 107, 8: 108, 9: 109, 10: 110, 120: 121}
#: Errors that come with a close.
CLOSING_ERRNOS = frozenset({14, 15, 16, 17, 18, 20})
#: The fields of requests (``msgid`` last).
FIELDS: tuple[str, ...] = ("id", "password", "name", "toid", "msg", "friendid", "groupid")
FIELDS += ("groupname", "groupdesc", "ref", "cid", "cursor", "device", "after", "msgid")
_SPLIT = re.compile(rb"([\0\n])")
_LINGER_RESET = struct.pack("ii", 1, 0)


#: Scores a frame received for one request: 2 its answer, 1 may be, 0 not.
Want = Callable[[Frame], int]


class FuzzFailure(AssertionError):
    """The node did something it must not."""


@dataclass(frozen=True)
class Wire:
    """How a well-formed frame goes on the wire."""

    end: bytes = b"\n"
    cuts: tuple[int, ...] = ()
    spaced: bool = False
    ascii: bool = True

    def encode(self, frame: Any) -> bytes:
        separators = (", ", ": ") if self.spaced else (",", ":")
        text = json.dumps(frame, ensure_ascii=self.ascii, separators=separators)
        return text.encode() + self.end


def _pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    pieces = []
    for size in cuts:
        if len(data) <= size:
            break
        pieces.append(data[:size])
        data = data[size:]
    return [*pieces, data]


# --- one raw connection -----------------------------------------------------------------


class Conn:
    """One blocking TCP connection to a node that reads only when told to.

    Attributes:
        dirty: The node may be in the middle of a frame (or past a NUL it has not
            seen the end of): the next clean frame must be preceded by a NUL.
        unsynced: Answers to frames sent since the last barrier may still come.
        opens: ``[`` and ``{`` sent since the last NUL, while dirty (an upper bound
            of the depth of the node's current frame).
        since_nul: Bytes sent since the last NUL, while dirty.
        provoked: Something sent may make the node close this connection.
        user: Who is logged in (when ``certain``).
        certain: ``user`` is known (no frame since the last login or logout could
            have logged in or out).
    """

    def __init__(self, node: int, handle: NodeHandle, name: str, counts: "Counter[str]") -> None:
        self.node = node
        self.name = name
        self.counts = counts
        self.sock = socket.create_connection((handle.host, handle.port), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending = b""
        self.inbox: list[Frame] = []
        self.ended = False
        self.gone = False
        self.dirty = False
        self.unsynced = False
        self.opens = 0
        self.since_nul = 0
        self.provoked = False
        self.user: int | None = None
        self.certain = True
        self.cursor: int | None = None
        self.farewell: Frame | None = None
        self.sent: list[str] = []

    @property
    def usable(self) -> bool:
        return not (self.ended or self.gone)

    # -- writing -----------------------------------------------------------------------

    def _account(self, data: bytes, clean: bool) -> None:
        """Track what the node's decoder may hold after ``data`` (a NUL ends a frame)."""
        if clean and not self.dirty:
            return
        segments = data.split(b"\0")
        for index, segment in enumerate(segments):
            if index:
                self.opens = self.since_nul = 0
            self.opens += segment.count(b"{") + segment.count(b"[")
            self.since_nul += len(segment)
            if self.opens > DEPTH_LIMIT or self.since_nul >= FRAME_LIMIT - 64:
                self.provoked = True
        self.dirty = bool(segments[-1]) or (len(segments) == 1 and self.dirty)

    def send(self, data: bytes, *, clean: bool, cuts: Sequence[int] = (), what: str = "") -> bool:
        """Write ``data`` (in pieces of ``cuts`` bytes first); False if the node closed.

        Args:
            clean: ``data`` is complete well-formed frames (under the limits) that
                leave the node's decoder between frames.
        """
        if not self.usable:
            return False
        self._account(data, clean)
        if not clean:
            self.unsynced = True
        self.sent.append(what or repr(data[:80]))
        del self.sent[:-12]
        try:
            for index, piece in enumerate(_pieces(data, cuts)):
                if index:
                    time.sleep(0.001)
                self.sock.sendall(piece)
        except TimeoutError:
            raise FuzzFailure(
                f"{self.name}: the node read nothing for {IO_TIMEOUT:.0f}s; sent: {self.sent}"
            ) from None
        except OSError:
            self._end()
            return False
        return True

    # -- reading -----------------------------------------------------------------------

    def pump(self, wait: float = 0.0) -> None:
        """Read what the node sent, waiting up to ``wait`` seconds for the first bytes."""
        while self.usable:
            ready, _, _ = select.select([self.sock], [], [], max(wait, 0.0))
            if not ready:
                return
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._end()
                return
            self._feed(data)
            wait = 0.0

    def _end(self) -> None:
        self.ended = True
        self.counts["connections closed by the node"] += 1
        if not self.provoked:
            raise FuzzFailure(
                f"{self.name}: the node closed a connection that sent nothing that may close"
                f" it (last error: {self.farewell}); last frames sent: {self.sent}"
            )

    def _feed(self, data: bytes) -> None:
        *parts, self._pending = _SPLIT.split(self._pending + data)
        for raw, end in zip(parts[::2], parts[1::2], strict=True):
            if not raw:
                continue
            if end == b"\0" and len(raw) + 1 > CLASSIC_FRAME:
                raise FuzzFailure(f"{self.name}: a classic frame of {len(raw) + 1} bytes")
            self._file(self._parse(raw))

    def _parse(self, raw: bytes) -> Frame:
        try:
            frame = json.loads(raw)
        except ValueError:
            raise FuzzFailure(
                f"{self.name}: the node sent a frame that is not JSON: {raw!r:.300}"
            ) from None
        if not isinstance(frame, dict) or type(frame.get("msgid")) is not int:
            raise FuzzFailure(f"{self.name}: the node sent {raw!r:.300}")
        if frame.get("errno") == 50:
            raise FuzzFailure(f"{self.name}: internal error {frame}; last frames sent: {self.sent}")
        return frame

    def _file(self, frame: Frame) -> None:
        self.counts["frames received"] += 1
        msgid = frame["msgid"]
        if msgid in (6, 10):
            self.counts["pushes received"] += 1
            if isinstance(frame.get("cursor"), int):
                self.cursor = frame["cursor"]
            return
        if msgid == 2:
            for text in frame.get("offlinemsg", []):
                self.counts["pushes received"] += 1
                self._parse(text.encode() if isinstance(text, str) else b"")
        if frame.get("errno") in CLOSING_ERRNOS:
            self.farewell = frame
        self.inbox.append(frame)
        del self.inbox[:-1000]

    def answers(
        self, wants: Sequence["Want"], within: float = REPLY, *, barrier: bool = False
    ) -> list[Frame] | None:
        """Take one frame per want out of the inbox, each a different one.

        A want scores a frame 2 (its answer), 1 (may be its answer) or 0. Frames
        scored 2 are handed out first, in the order received, then those scored 1:
        a refusal found while decoding (errno 13...) may come without its ``ref``
        and overtake the answers to earlier requests. Frames not taken stay,
        unless this is a ``barrier``: then every frame before the last one taken
        answered something sent before it, and is dropped.

        Returns:
            The frames, in the order of ``wants``; None if the connection ended or
            ``within`` seconds passed first.
        """
        deadline = time.monotonic() + within
        while True:
            chosen = self._assign(wants)
            if chosen is not None:
                frames = [self.inbox[index] for index in chosen]
                if barrier:
                    del self.inbox[: max(chosen) + 1]
                else:
                    for index in sorted(chosen, reverse=True):
                        del self.inbox[index]
                return frames
            left = deadline - time.monotonic()
            if not self.usable or left <= 0:
                return None
            self.pump(left)

    def _assign(self, wants: Sequence["Want"]) -> list[int] | None:
        chosen: list[int | None] = [None] * len(wants)
        used: set[int] = set()
        for level in (2, 1):
            for number, want in enumerate(wants):
                if chosen[number] is not None:
                    continue
                for index, frame in enumerate(self.inbox):
                    if index not in used and want(frame) >= level:
                        chosen[number] = index
                        used.add(index)
                        break
        taken = [index for index in chosen if index is not None]
        return taken if len(taken) == len(wants) else None

    def answer(
        self, want: Callable[[Frame], bool], within: float = REPLY, *, barrier: bool = False
    ) -> Frame | None:
        """The first frame received that ``want``s (see ``answers``)."""
        frames = self.answers([lambda frame: 2 if want(frame) else 0], within, barrier=barrier)
        return frames[0] if frames else None

    def until_ended(self, within: float) -> bool:
        """Read until the node closes the connection; whether it did within ``within``."""
        deadline = time.monotonic() + within
        while self.usable and (left := deadline - time.monotonic()) > 0:
            self.pump(left)
        return self.ended

    # -- closing -----------------------------------------------------------------------

    def close(self, how: str = "close") -> None:
        """Close from our side: ``close`` (FIN), ``reset`` (RST) or ``shutdown`` first."""
        if self.gone:
            return
        self.provoked = True  # what the node does now is its business
        with contextlib.suppress(OSError, FuzzFailure):
            if how == "reset":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            elif how == "shutdown":
                self.sock.shutdown(socket.SHUT_WR)
                self.until_ended(0.2)
        self.gone = True
        self.sock.close()


# --- the cluster under test -------------------------------------------------------------


@dataclass
class Cluster:
    """The nodes, their Redis, the users every sequence knows, and the counts."""

    nodes: list[NodeHandle]
    redis: "redis.Redis"
    users: list[tuple[int, str]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    names: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)

    def connect(self, node: int) -> Conn:
        self.counts["connections"] += 1
        return Conn(node, self.nodes[node], f"conn-{self.names()}@n{node + 1}", self.counts)

    def alive(self) -> None:
        for node_id, node in zip(NODE_IDS, self.nodes, strict=True):
            if not node.child.alive():
                raise FuzzFailure(f"node {node_id} exited with {node.child.returncode}")

    def leftovers(self) -> list[str]:
        """Sessions and subscriptions left, as Redis sees them."""
        found = []
        channels = self.redis.pubsub_channels(f"{PREFIX}:user:*")
        if channels:
            found.append(f"user channels still subscribed: {sorted(channels)}")
        for node_id in NODE_IDS:
            online = self.redis.smembers(f"{{{PREFIX}}}:presence:users:{node_id}")
            if online:
                found.append(f"{node_id} reports users online: {sorted(online)}")
            users = self.redis.hget(f"{{{PREFIX}}}:presence:node:{node_id}", "users")
            if users not in (None, "0"):
                found.append(f"{node_id} counts {users!r} users")
        return found

    def wait_no_sessions(self) -> None:
        deadline = time.monotonic() + SETTLE
        while left := self.leftovers():
            if time.monotonic() > deadline:
                raise FuzzFailure(f"{SETTLE:.0f}s after every connection closed: {'; '.join(left)}")
            time.sleep(0.02)

    def log_sizes(self) -> list[int]:
        return [node.child.log_path.stat().st_size for node in self.nodes]

    def check_logs(self, since: Sequence[int]) -> None:
        for node_id, node, start in zip(NODE_IDS, self.nodes, since, strict=True):
            with node.child.log_path.open("rb") as log:
                log.seek(start)
                text = log.read().decode(errors="replace")
            for word in ("Traceback", "exception was never retrieved"):
                if word in text:
                    at = text.index(word)
                    raise FuzzFailure(
                        f"node {node_id} logged: {text[max(0, at - 300) : at + 3000]}"
                    )

    def request(self, conn: Conn, frame: Frame) -> Frame:
        """A request on a fresh, clean connection whose answer must come."""
        conn.send(Wire().encode(frame), clean=True, what=str(frame))
        answer = conn.answer(lambda f: f["msgid"] == ANSWER[frame["msgid"]])
        assert answer is not None, f"{conn.name}: no answer to {frame}"
        return answer

    def populate(self) -> None:
        """Register the users and the group every sequence knows; check that a login
        shows in Redis, so that the checks for leftovers can see one."""
        conn = self.connect(0)
        for number in range(BASE_USERS):
            answer = self.request(conn, {"msgid": 4, "name": f"base{number}", "password": PASSWORD})
            assert answer["errno"] == 0, answer
            self.users.append((answer["id"], PASSWORD))
        user = self.users[0][0]
        answer = self.request(conn, {"msgid": 1, "id": user, "password": PASSWORD})
        assert answer["errno"] == 0, answer
        answer = self.request(conn, {"msgid": 8, "groupname": "base", "groupdesc": "fuzz"})
        assert answer["errno"] == 0, answer
        self.groups.append(answer["groupid"])
        deadline = time.monotonic() + SETTLE
        while len(self.leftovers()) < 2:  # the channel and the presence entry (or count)
            assert time.monotonic() < deadline, f"a login does not show: {self.leftovers()}"
            time.sleep(0.02)
        conn.close()
        self.wait_no_sessions()
        self.counts.clear()

    def check_service(self) -> None:
        """A fresh connection to each node registers, logs in and pings."""
        for node in range(len(self.nodes)):
            conn = self.connect(node)
            try:
                name = f"after{node}"
                answer = self.request(conn, {"msgid": 4, "name": name, "password": PASSWORD})
                assert answer["errno"] == 0, answer
                answer = self.request(conn, {"msgid": 1, "id": answer["id"], "password": PASSWORD})
                assert answer["errno"] == 0, answer
                pong = self.request(conn, {"msgid": 120, "ref": 7})
                assert pong == {"msgid": 121, "ref": 7}, pong
            finally:
                conn.close()

    def summary(self) -> str:
        counts = self.counts
        sent = {kind: counts[f"frames sent: {kind}"] for kind in KINDS}
        kinds = ", ".join(f"{kind} {n}" for kind, n in sent.items())
        return (
            f"fuzz ({PROFILE}): {counts['sequences']} sequences, {counts['steps']} steps,"
            f" {sum(sent.values())} frames sent ({kinds}),"
            f" {counts['connections']} connections ({counts['connections closed by the node']}"
            f" closed by the node), {counts['frames received']} frames received"
            f" ({counts['pushes received']} pushes), {counts['registrations']} registrations,"
            f" {counts['logins']} logins, {counts['sequences closed with sessions']} sequences"
            " closed with sessions open"
        )


KINDS = (
    "valid",
    "pipelined",
    "invalid",
    "garbage",
    "truncated",
    "nul-split",
    "oversized",
    "too deep",
    "deep",
    "vanishing",
)


# --- strategies -------------------------------------------------------------------------

SLOT = st.integers(0, SLOTS - 1)
NODE = st.integers(0, 1)
WIRES = st.builds(
    Wire,
    end=st.sampled_from([b"\n", b"\0", b"\r\n", b" ", b""]),
    cuts=st.lists(st.integers(1, 40), max_size=3).map(tuple),
    spaced=st.booleans(),
    ascii=st.booleans(),
)
IDS = st.sampled_from([1, 2, 3, 5, 8, MAX_ID]) | st.integers(1, MAX_ID)
#: Mostly true: a known user, a right password (a session is what may leak).
MOSTLY = st.sampled_from([True, True, True, False])
#: A user: (known?, which known one, or this id).
TARGETS = st.tuples(MOSTLY, st.integers(0, 63), IDS)
TEXTS = (
    st.text(max_size=40)
    | st.sampled_from(["hi", " ", "", '中文{}[]"\\\n\0'])
    | st.integers(500, 9000).map(lambda n: "m" * n)
)
NAMES = st.none() | st.text(max_size=70)
PASSWORDS = st.just(PASSWORD) | st.text(max_size=20) | st.integers(250, 260).map(lambda n: "p" * n)
BAD_IDS = st.sampled_from([0, -1, MAX_ID + 1, 2**63, 2**64, -(2**63) - 1]) | st.integers()
MSGIDS = st.sampled_from([1, 3, 4, 6, 7, 8, 9, 10, 120, 130])


@st.composite
def invalid_frames(draw: st.DrawFn) -> Any:
    """Well-formed JSON that is no valid request: wrong field types and values,
    ids out of range, unknown msgids, values that are not objects."""
    kind = draw(st.sampled_from(["fields", "range", "unknown", "not an object", "no msgid"]))
    if kind == "fields":
        fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_values(6), max_size=4))
        return {"msgid": draw(MSGIDS), **fields}
    if kind == "range":
        msgid, key = draw(
            st.sampled_from(
                [(1, "id"), (6, "toid"), (7, "friendid"), (9, "groupid"), (10, "groupid")]
            )
        )
        return {"msgid": msgid, key: draw(BAD_IDS), "password": PASSWORD, "msg": "x", "ref": 1}
    if kind == "unknown":
        value = draw(st.integers().filter(lambda n: n not in ANSWER and n != 130) | json_values(3))
        return {"msgid": value, **draw(st.dictionaries(st.sampled_from(FIELDS), json_values(3)))}
    if kind == "not an object":
        return draw(json_values(8).filter(lambda value: not isinstance(value, dict)))
    return draw(st.dictionaries(st.sampled_from(FIELDS[:-1]), json_values(4), max_size=3))


GARBAGE = stream_bytes(40) | jsonish_bytes() | st.binary(max_size=64)


# --- the state machine ------------------------------------------------------------------


def _has_conns(machine: "FuzzMachine") -> bool:
    return bool(machine.conns)


class FuzzMachine(RuleBasedStateMachine):
    """Connections to the cluster, each sending what the rules draw."""

    cluster: ClassVar[Cluster | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.cluster is not None
        self.c = self.cluster
        self.c.counts["sequences"] += 1
        self.conns: list[Conn] = []
        self.users = list(self.c.users)
        self.groups = list(self.c.groups)
        self.refs = itertools.count(1)
        self.log_start = self.c.log_sizes()

    # -- helpers -----------------------------------------------------------------------

    def live(self) -> list[Conn]:
        """The connections, after reading what came; one the node closed is replaced
        by a new one to the same node (so that what the rules draw does not depend
        on when a close is noticed)."""
        for index, conn in enumerate(self.conns):
            conn.pump()
            if not conn.usable:
                conn.close()
                self.c.counts["reconnections"] += 1
                self.conns[index] = self.c.connect(conn.node)
        return self.conns

    def pick(self, slot: int) -> Conn:
        self.c.counts["steps"] += 1
        conns = self.live()
        return conns[slot % len(conns)]

    def user(self, who: tuple[bool, int, int]) -> int:
        known, index, raw = who
        return self.users[index % len(self.users)][0] if known else raw

    def password(self, user: int) -> str:
        return next((password for id_, password in self.users if id_ == user), PASSWORD)

    def group(self, who: tuple[bool, int, int]) -> int:
        known, index, raw = who
        return self.groups[index % len(self.groups)] if known else raw

    def count(self, kind: str) -> None:
        self.c.counts[f"frames sent: {kind}"] += 1

    def prepare(self, conn: Conn) -> None:
        """End a pending frame with a NUL, and read the answers to what came before
        (a ping, answered after them)."""
        if conn.dirty:
            conn.send(b"\0", clean=True, what="NUL")
        if conn.unsynced and conn.usable:
            ref = 10**12 + next(self.refs)
            conn.send(Wire().encode({"msgid": 120, "ref": ref}), clean=True, what="barrier")
            pong = conn.answer(lambda f: f["msgid"] == 121 and f.get("ref") == ref, barrier=True)
            if pong is None and conn.usable:
                raise FuzzFailure(f"{conn.name}: no pong within {REPLY:.0f}s; sent: {conn.sent}")
            conn.unsynced = False

    @staticmethod
    def want(frame: Frame) -> "Want":
        """What answers ``frame``: its answer type (or an ERROR naming it) with its ``ref``."""
        msgid = frame["msgid"]
        expected = ANSWER[msgid]

        def score(answer: Frame) -> int:
            error = answer["msgid"] == 100 and answer.get("req") == msgid
            if answer["msgid"] != expected and not error:
                return 0
            if "ref" not in frame or answer.get("ref") == frame["ref"]:
                return 2
            return 0

        return score

    def take(self, conn: Conn, frames: Sequence[Frame]) -> list[Frame] | None:
        """The answers to ``frames`` (sent on ``conn``); a failure if they do not come."""
        wanted = [frame for frame in frames if frame["msgid"] in ANSWER]
        answers = conn.answers([self.want(frame) for frame in wanted])
        if answers is None:
            if conn.usable:
                raise FuzzFailure(
                    f"{conn.name}: no answer to all of {wanted} within {REPLY:.0f}s;"
                    f" received and not taken: {conn.inbox[-10:]}; sent: {conn.sent}"
                )
            return None
        for answer in answers:
            if answer.get("errno") == 0 and answer["msgid"] in (2, 5):
                self.c.counts["logins" if answer["msgid"] == 2 else "registrations"] += 1
        return answers

    def request(self, conn: Conn, frame: Frame, wire: Wire) -> Frame | None:
        """Send one well-formed request on a clean connection and read its answer."""
        self.prepare(conn)
        self.count("valid")
        if not conn.send(wire.encode(frame), clean=True, cuts=wire.cuts, what=str(frame)[:200]):
            return None
        if frame["msgid"] not in ANSWER:
            return None
        answers = self.take(conn, [frame])
        return answers[0] if answers else None

    def valid_frame(self, conn: Conn, kind: str, who: tuple[bool, int, int], text: str) -> Frame:
        """A well-formed request of ``kind``."""
        if kind == "login":
            user = self.user(who)
            return {"msgid": 1, "id": user, "password": self.password(user)}
        if kind == "chat":
            return {"msgid": 6, "toid": self.user(who), "msg": text, "ref": next(self.refs)}
        if kind == "group":
            return {"msgid": 10, "groupid": self.group(who), "msg": text, "ref": next(self.refs)}
        if kind == "friend":
            return {"msgid": 7, "friendid": self.user(who)}
        if kind == "join":
            return {"msgid": 9, "groupid": self.group(who)}
        if kind == "create":
            return {"msgid": 8, "groupname": f"g{self.c.names()}", "groupdesc": text[:256]}
        if kind == "register":
            return {"msgid": 4, "name": f"u{self.c.names()}", "password": PASSWORD}
        if kind == "logout":
            return {"msgid": 3}
        return {"msgid": 120, "ref": next(self.refs)}

    def after_login(self, conn: Conn, frame: Frame, answer: Frame | None) -> None:
        if answer is None or answer["msgid"] != 2:
            return
        right = frame["password"] == self.password(frame["id"])
        errno = answer.get("errno")
        if errno == 0:
            if not right:
                raise FuzzFailure(f"{conn.name}: a wrong password logged in: {frame} -> {answer}")
            conn.user, conn.certain = frame["id"], True
            conn.cursor = answer.get("cursor")
        elif right and conn.certain and conn.user is None and errno not in (19,):
            known = any(frame["id"] == id_ for id_, _ in self.users)
            if known:
                raise FuzzFailure(f"{conn.name}: a right password refused: {frame} -> {answer}")

    # -- rules: connections --------------------------------------------------------------

    @initialize(node=NODE)
    def first_connection(self, node: int) -> None:
        self.conns.append(self.c.connect(node))

    @precondition(lambda self: len(self.conns) < SLOTS)
    @rule(node=NODE)
    def connect(self, node: int) -> None:
        self.c.counts["steps"] += 1
        self.conns.append(self.c.connect(node))

    @precondition(_has_conns)
    @rule(slot=SLOT, how=st.sampled_from(["close", "reset", "shutdown"]))
    def close(self, slot: int, how: str) -> None:
        conn = self.pick(slot)
        conn.close(how)
        self.conns.remove(conn)

    @precondition(_has_conns)
    @rule(slot=SLOT, wait=st.sampled_from([0.0, 0.01, 0.05]))
    def read(self, slot: int, wait: float) -> None:
        conn = self.pick(slot)
        conn.pump(wait)

    # -- rules: well-formed requests ----------------------------------------------------

    @precondition(_has_conns)
    @rule(slot=SLOT, name=NAMES, password=PASSWORDS, wire=WIRES)
    def register(self, slot: int, name: str | None, password: str, wire: Wire) -> None:
        conn = self.pick(slot)
        frame = {"msgid": 4, "name": name or f"u{self.c.names()}", "password": password}
        answer = self.request(conn, frame, wire)
        if answer is not None and answer["msgid"] == 5 and answer.get("errno") == 0:
            if not 1 <= answer.get("id", 0) <= MAX_ID:
                raise FuzzFailure(f"{conn.name}: registered with id {answer}")
            self.users.append((answer["id"], password))

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        who=TARGETS,
        right=MOSTLY,
        device=st.none() | st.sampled_from(["d1", "d2"]),
        after=st.none() | st.integers(0, 5),
        wire=WIRES,
    )
    def login(
        self,
        slot: int,
        who: tuple[bool, int, int],
        right: bool,
        device: str | None,
        after: int | None,
        wire: Wire,
    ) -> None:
        conn = self.pick(slot)
        user = self.user(who)
        password = self.password(user) if right else self.password(user) + "x"
        frame: Frame = {"msgid": 1, "id": user, "password": password}
        if device is not None:
            frame["device"] = device
            if after is not None:
                frame["after"] = after
        self.after_login(conn, frame, self.request(conn, frame, wire))

    @precondition(_has_conns)
    @rule(slot=SLOT, wire=WIRES)
    def logout(self, slot: int, wire: Wire) -> None:
        conn = self.pick(slot)
        answer = self.request(conn, {"msgid": 3}, wire)
        if answer is not None and answer["msgid"] == 103 and answer.get("errno") == 0:
            conn.user, conn.certain, conn.cursor = None, True, None

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        who=TARGETS,
        text=TEXTS,
        cid=st.none() | st.sampled_from(["c1", "c2"]),
        own_id=st.booleans(),
        group=st.booleans(),
        wire=WIRES,
    )
    def chat(
        self,
        slot: int,
        who: tuple[bool, int, int],
        text: str,
        cid: str | None,
        own_id: bool,
        group: bool,
        wire: Wire,
    ) -> None:
        conn = self.pick(slot)
        frame = self.valid_frame(conn, "group" if group else "chat", who, text)
        if cid is not None:
            frame["cid"] = cid
        if own_id and conn.user is not None:
            frame["id"] = conn.user
        answer = self.request(conn, frame, wire)
        if answer is None or answer["msgid"] not in (106, 110):
            return
        if answer.get("errno") == 0:
            if conn.certain and conn.user is None:
                raise FuzzFailure(f"{conn.name}: a chat accepted without a login: {answer}")
            if not isinstance(answer.get("mid"), str):
                raise FuzzFailure(f"{conn.name}: a chat accepted without a mid: {answer}")

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        kind=st.sampled_from(["friend", "join", "create", "ping"]),
        who=TARGETS,
        text=TEXTS,
        wire=WIRES,
    )
    def social(
        self, slot: int, kind: str, who: tuple[bool, int, int], text: str, wire: Wire
    ) -> None:
        conn = self.pick(slot)
        frame = self.valid_frame(conn, kind, who, text)
        answer = self.request(conn, frame, wire)
        if answer is None:
            return
        if kind == "create" and answer.get("errno") == 0:
            self.groups.append(answer["groupid"])
        if kind == "ping" and answer != {"msgid": 121, "ref": frame["ref"]}:
            raise FuzzFailure(f"{conn.name}: {frame} answered {answer}")

    @precondition(_has_conns)
    @rule(slot=SLOT, cursor=st.none() | st.integers(0, 2**63 - 1), wire=WIRES)
    def ack(self, slot: int, cursor: int | None, wire: Wire) -> None:
        conn = self.pick(slot)
        value = conn.cursor if cursor is None else cursor
        self.request(conn, {"msgid": 130, "cursor": value or 0}, wire)
        conn.unsynced = True  # an ACK is answered only when refused

    @precondition(_has_conns)
    @rule(
        plan=st.lists(
            st.tuples(
                SLOT,
                st.sampled_from(["ping", "chat", "group", "login", "friend", "join", "logout"]),
                TARGETS,
                TEXTS,
            ),
            min_size=2,
            max_size=12,
        )
    )
    def pipelined(self, plan: list[tuple[int, str, tuple[bool, int, int], str]]) -> None:
        """Several requests per connection in one write each, on every connection
        before any reads: the nodes work on all of them at once."""
        self.c.counts["steps"] += 1
        conns = self.live()
        batches: dict[int, list[Frame]] = {}
        for slot, kind, who, text in plan:
            conn = conns[slot % len(conns)]
            batches.setdefault(id(conn), []).append(self.valid_frame(conn, kind, who, text))
        for conn in conns:
            self.prepare(conn)
        for conn in conns:
            frames = batches.get(id(conn), [])
            if frames:
                self.c.counts["frames sent: pipelined"] += len(frames)
                data = b"".join(Wire().encode(frame) for frame in frames)
                conn.send(data, clean=True, what=f"{len(frames)} pipelined: {frames}"[:300])
        for conn in conns:
            self.take(conn, batches.get(id(conn), []))
            conn.certain = False

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        kind=st.sampled_from(["login", "register", "chat", "group", "join", "logout"]),
        who=TARGETS,
        how=st.sampled_from(["close", "reset"]),
    )
    def send_and_vanish(self, slot: int, kind: str, who: tuple[bool, int, int], how: str) -> None:
        """A request, then the connection closes at once, its answer unread."""
        conn = self.pick(slot)
        self.prepare(conn)
        frame = self.valid_frame(conn, kind, who, "bye")
        self.count("vanishing")
        conn.send(Wire().encode(frame), clean=True, what=str(frame))
        conn.close(how)
        self.conns.remove(conn)

    # -- rules: hostile frames ----------------------------------------------------------

    @precondition(_has_conns)
    @rule(slot=SLOT, value=invalid_frames(), wire=WIRES)
    def invalid(self, slot: int, value: Any, wire: Wire) -> None:
        conn = self.pick(slot)
        self.count("invalid")
        data = wire.encode(value)
        well_formed = isinstance(value, dict) and nesting(value) <= DEPTH_LIMIT
        conn.send(data, clean=well_formed and wire.end != b"", cuts=wire.cuts, what=repr(data))
        conn.unsynced, conn.certain = True, False

    @precondition(_has_conns)
    @rule(slot=SLOT, data=GARBAGE, cuts=st.lists(st.integers(1, 40), max_size=3))
    def garbage(self, slot: int, data: bytes, cuts: list[int]) -> None:
        conn = self.pick(slot)
        self.count("garbage")
        conn.send(data, clean=False, cuts=cuts, what=f"garbage {data!r}")
        conn.certain = False

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        kind=st.sampled_from(["login", "register", "chat", "group", "create", "ping"]),
        who=TARGETS,
        text=TEXTS,
        at=st.integers(1, 1 << 16),
        nul=st.booleans(),
        wire=WIRES,
    )
    def cut_frame(
        self,
        slot: int,
        kind: str,
        who: tuple[bool, int, int],
        text: str,
        at: int,
        nul: bool,
        wire: Wire,
    ) -> None:
        """A valid frame cut short, or with a NUL in the middle."""
        conn = self.pick(slot)
        data = Wire(end=b"", spaced=wire.spaced, ascii=wire.ascii).encode(
            self.valid_frame(conn, kind, who, text)
        )
        at = 1 + at % (len(data) - 1)
        if nul:
            self.count("nul-split")
            data = data[:at] + b"\0" + data[at:] + wire.end
        else:
            self.count("truncated")
            data = data[:at]
        conn.send(data, clean=False, cuts=wire.cuts, what=f"cut {data!r:.300}")
        conn.certain = False

    @precondition(_has_conns)
    @rule(
        slot=SLOT,
        extra=st.integers(-16, 4096),
        complete=st.booleans(),
        shape=st.sampled_from(["string", "bare"]),
    )
    def oversized(self, slot: int, extra: int, complete: bool, shape: str) -> None:
        """A frame of about 64 KiB (just under, at or over the limit)."""
        conn = self.pick(slot)
        self.prepare(conn)
        self.count("oversized")
        size = FRAME_LIMIT + extra
        if shape == "bare":
            data = b"x" * size
        else:
            head, tail = b'{"msgid":6,"toid":1,"ref":1,"msg":"', b'"}' if complete else b""
            data = head + b"m" * max(size - len(head) - len(tail), 0) + tail
        sent = conn.send(data, clean=False, what=f"{len(data)} bytes ({shape})")
        conn.certain = False
        oversize = shape == "string" and len(data) > FRAME_LIMIT + 16
        if oversize and sent and not conn.until_ended(CLOSE_WAIT):
            raise FuzzFailure(f"{conn.name}: a frame of {len(data)} bytes did not close it")

    @precondition(_has_conns)
    @rule(slot=SLOT, depth=st.integers(DEPTH_LIMIT - 3, DEPTH_LIMIT + 24), complete=st.booleans())
    def deep(self, slot: int, depth: int, complete: bool) -> None:
        """A request nested ``depth`` levels (the object itself is one)."""
        conn = self.pick(slot)
        self.prepare(conn)
        inner = depth - 1
        data = b'{"msgid":120,"ref":' + b"[" * inner
        if complete:
            data += b"]" * inner + b"}\n"
        self.count("too deep" if depth > DEPTH_LIMIT else "deep")
        sent = conn.send(data, clean=False, what=f"depth {depth}, complete {complete}")
        conn.certain = False
        if depth > DEPTH_LIMIT and complete and sent and not conn.until_ended(CLOSE_WAIT):
            raise FuzzFailure(f"{conn.name}: a frame {depth} deep did not close it")

    # -- checks ---------------------------------------------------------------------------

    @invariant()
    def nodes_run(self) -> None:
        self.c.alive()

    def teardown(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()
        self.c.alive()
        if self.c.leftovers():
            self.c.counts["sequences closed with sessions"] += 1
        self.c.wait_no_sessions()
        self.c.check_logs(self.log_start)


# --- the test ---------------------------------------------------------------------------


def _store_problems(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as store:
        integrity = [row[0] for row in store.execute("PRAGMA integrity_check")]
        foreign = store.execute("PRAGMA foreign_key_check").fetchall()
    problems = [] if integrity == ["ok"] else [f"integrity_check: {integrity}"]
    if foreign:
        problems.append(f"foreign_key_check: {foreign[:20]}")
    return problems


@pytest.mark.timeout(0 if PROFILE != "fuzz" else 120)
def test_random_frame_sequences_never_crash_leak_or_corrupt(
    node_factory: NodeFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    nodes = [
        node_factory(
            db_url=f"sqlite:///{db}",
            extra_args=["--redis", redis_server.url, "--node-id", node_id],
            env=NODE_ENV,
        )
        for node_id in NODE_IDS
    ]
    client: redis.Redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
    cluster = Cluster(nodes, client)
    started = time.monotonic()
    try:
        cluster.populate()
        FuzzMachine.cluster = cluster
        try:
            run_state_machine_as_test(FuzzMachine, settings=settings.get_profile(PROFILE))
        except BaseException as exc:
            exc.add_note(cluster.summary())
            raise
        finally:
            FuzzMachine.cluster = None
            print(f"\n{cluster.summary()}, {time.monotonic() - started:.1f}s")
        cluster.alive()
        cluster.check_service()
        cluster.wait_no_sessions()
    finally:
        client.close()
    statuses = [node.stop() for node in nodes]
    assert statuses == [0, 0], f"exit statuses {statuses} ({cluster.summary()})"
    cluster.check_logs([0, 0])
    problems = _store_problems(db)
    assert not problems, f"the store after fuzzing: {problems} ({cluster.summary()})"
