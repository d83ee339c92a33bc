"""Recorder: one worker's account of every message of the current step.

Each message text is ``"<step>:<seq>:<send time ns>"``: the step it belongs
to, a sequence number unique in this worker, and ``time.monotonic_ns()`` at
sending. The sender announces each message (``sent``) before writing it, with
how many receivers must get it (1 for one-to-one, members - 1 for a group).
Each receiver reports what arrived (``delivered``):

* a (receiver, seq) seen before is a duplicate;
* a message of an earlier step is late (its step was reported already);
* when the last receiver of a message has it, its latency (send to last
  receiver: the fan-out latency for a group) is kept.

``done`` is set once sending has ended and no message is missing a receiver;
the step's drain waits for it.
"""

import asyncio
import time
from array import array

__all__ = ["Recorder", "message_text"]

_SEQ_BITS = 32


def message_text(step: int, seq: int, send_ns: int) -> str:
    """The text of a bench message: step, sequence number and send time."""
    return f"{step}:{seq}:{send_ns}"


class Recorder:
    """Deliveries, duplicates and latencies of the messages of one step at a time."""

    def __init__(self) -> None:
        self.step = -1
        self._seq = 0
        self._pending: dict[int, int] = {}  # seq -> receivers still missing
        self._seen: set[int] = set()
        self.latencies_us = array("q")
        self.sent = 0
        self.expected = 0
        self.received = 0
        self.duplicated = 0
        self.late = 0
        self.errors = 0
        self.error_sample = ""
        self.last_received_ns = 0
        self._sending = False
        self.done = asyncio.Event()

    def begin(self, step: int) -> None:
        """Start a new step: forget the previous one's figures (``late`` is kept until read)."""
        self.step = step
        self._pending.clear()
        self._seen.clear()
        self.latencies_us = array("q")
        self.sent = self.expected = self.received = self.duplicated = 0
        self.errors = 0
        self.error_sample = ""
        self.last_received_ns = 0
        self._sending = True
        self.done.clear()

    def next_message(self, receivers: int) -> str:
        """Announce a message about to be sent to ``receivers`` receivers; return its text."""
        self._seq += 1
        seq = self._seq
        self._pending[seq] = receivers
        self.sent += 1
        self.expected += receivers
        return message_text(self.step, seq, time.monotonic_ns())

    def end_sending(self) -> None:
        """No more messages this step; ``done`` is set once none is missing."""
        self._sending = False
        if not self._pending:
            self.done.set()

    @property
    def missing(self) -> int:
        """Messages of this step that some receiver has not had yet."""
        return len(self._pending)

    def delivered(self, receiver: int, text: str) -> None:
        """A receiver (its index in the pool) got a message with ``text``."""
        now = time.monotonic_ns()
        try:
            step_text, seq_text, sent_text = text.split(":")
            step, seq, send_ns = int(step_text), int(seq_text), int(sent_text)
        except ValueError:
            self.error(f"unexpected message text {text[:60]!r}")
            return
        if step != self.step:
            self.late += 1
            return
        key = (receiver << _SEQ_BITS) | seq
        if key in self._seen:
            self.duplicated += 1
            return
        self._seen.add(key)
        self.received += 1
        self.last_received_ns = now
        remaining = self._pending.get(seq)
        if remaining is None:  # pragma: no cover - only with a receiver count that is wrong
            return
        if remaining > 1:
            self._pending[seq] = remaining - 1
            return
        del self._pending[seq]
        self.latencies_us.append((now - send_ns) // 1000)
        if not self._pending and not self._sending:
            self.done.set()

    def error(self, text: str) -> None:
        """A refusal or error answer arrived."""
        self.errors += 1
        if not self.error_sample:
            self.error_sample = text
