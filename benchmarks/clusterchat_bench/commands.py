"""The messages between the bench coordinator and its load-generator processes.

The coordinator sends one command to each worker and waits for one result
per worker; meanwhile a worker may send ``Progress`` (cumulative count of
what the current command has done). A command that raises comes back as
``Failed`` with the traceback. Every value is a frozen dataclass that pickles
through a ``multiprocessing`` pipe.

Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every
process of the machine), so figures from different workers combine.
"""

from dataclasses import dataclass

__all__ = [
    "Close",
    "Command",
    "Done",
    "Endpoint",
    "Exit",
    "Failed",
    "FlowsReady",
    "Login",
    "MakeGroups",
    "MakePairs",
    "Offline",
    "OfflineDone",
    "PhaseDone",
    "Progress",
    "Register",
    "Result",
    "Step",
    "StepDone",
    "UserSpec",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP address to connect to: a node, or the balancer in front of them."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UserSpec:
    """One user to create: its unique name, where it connects, from which source address."""

    name: str
    endpoint: Endpoint
    source: str | None = None


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """Register the users (over a few shared connections) as members of ``pool``."""

    pool: str
    users: tuple[UserSpec, ...]
    password: str
    concurrency: int


@dataclass(frozen=True, slots=True)
class Login:
    """Open each registered user's own connection and log it in; they stay open."""

    pool: str
    password: str
    concurrency: int


@dataclass(frozen=True, slots=True)
class MakePairs:
    """Pair users 2k and 2k+1 of ``pool``: each sends to the other."""

    pool: str


@dataclass(frozen=True, slots=True)
class MakeGroups:
    """Cut ``pool`` into groups of ``size``; the first member creates, the others join.

    The first member of each group is its one sender.
    """

    pool: str
    size: int
    prefix: str


@dataclass(frozen=True, slots=True)
class Step:
    """Send ``count`` messages over the pool's flows at ``rate`` per second, open loop.

    Then wait at most ``drain`` seconds for the deliveries still missing.
    """

    pool: str
    step: int
    rate: float
    count: int
    drain: float


@dataclass(frozen=True, slots=True)
class Offline:
    """Store ``count`` messages for an offline user, log it in, time their arrival."""

    sender: UserSpec
    receiver: UserSpec
    password: str
    count: int
    settle: float
    timeout: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close every connection of ``pool``."""

    pool: str


@dataclass(frozen=True, slots=True)
class Exit:
    """Close everything and end the worker process."""


Command = Register | Login | MakePairs | MakeGroups | Step | Offline | Close | Exit

# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """How many units the current command has done so far (cumulative)."""

    done: int


@dataclass(frozen=True, slots=True)
class Done:
    """A command without figures (``Close``) finished."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The command raised: the worker's traceback."""

    error: str


@dataclass(frozen=True, slots=True)
class PhaseDone:
    """Register or Login finished.

    Attributes:
        done: Users that succeeded.
        failed: Users that did not.
        failures: The first few reasons, for the report.
        started_ns: When the first one started.
        ended_ns: When the last one finished.
    """

    done: int
    failed: int
    failures: tuple[str, ...]
    started_ns: int
    ended_ns: int


@dataclass(frozen=True, slots=True)
class FlowsReady:
    """Pairs or groups set up: ``flows`` senders, ``receivers`` expected per message in all."""

    flows: int
    receivers: int
    failures: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StepDone:
    """What one worker saw of one step.

    Attributes:
        step: The step number.
        sent: Messages sent.
        expected: Deliveries expected (sent times the receivers of each).
        received: Distinct deliveries that arrived before the drain ended.
        duplicated: Deliveries that arrived a second time.
        late: Deliveries of an earlier step that arrived during this one.
        errors: Refusals and error answers received.
        error_sample: The first refusal's text, if any.
        started_ns: When sending started.
        send_ended_ns: When the last message was sent.
        last_received_ns: When the last delivery of this step arrived (0: none).
        latencies_us: Per message, send to last receiver, microseconds, as
            ``array('q')`` bytes (only messages every receiver got).
        lag_max_us: How far behind its schedule the sender fell at worst.
        aborted: The sender gave up: it fell too far behind to offer the rate.
    """

    step: int
    sent: int
    expected: int
    received: int
    duplicated: int
    late: int
    errors: int
    error_sample: str
    started_ns: int
    send_ended_ns: int
    last_received_ns: int
    latencies_us: bytes
    lag_max_us: int
    aborted: bool


@dataclass(frozen=True, slots=True)
class OfflineDone:
    """What the offline user got after logging in.

    Attributes:
        count: Messages stored for it (accepted by the server).
        received: Distinct messages that arrived.
        duplicated: Messages that arrived twice.
        in_order: Whether they arrived in the order sent.
        in_login_answer: How many came in the login answer itself.
        seconds_to_last: From sending the login to the last message's arrival.
        errors: Refusals while storing (their messages are not counted).
    """

    count: int
    received: int
    duplicated: int
    in_order: bool
    in_login_answer: int
    seconds_to_last: float
    errors: int


Result = Progress | Done | Failed | PhaseDone | FlowsReady | StepDone | OfflineDone
