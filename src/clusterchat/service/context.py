"""What every request handler needs: the node's backends and its per-node state."""

import asyncio
from dataclasses import dataclass, field

from clusterchat.bus.base import Bus
from clusterchat.presence.base import Presence
from clusterchat.protocol import Limits
from clusterchat.service.attempts import Attempts
from clusterchat.service.cursors import CursorKeeper
from clusterchat.service.delivery import Delivery
from clusterchat.service.group_channels import GroupChannels
from clusterchat.service.groups_cache import GroupCache
from clusterchat.service.ids import MessageIds
from clusterchat.service.log_writer import LogWriter
from clusterchat.service.passwords import PasswordHasher
from clusterchat.service.sessions import SessionRegistry
from clusterchat.service.users_cache import KnownUsers
from clusterchat.store.base import Store

__all__ = ["Context", "Policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Service behaviour that operators choose.

    No field has a default: the node builds its policy from its settings
    (``Settings.pick(Policy)``, defaults in ``clusterchat.settings``).

    Attributes:
        single_session: Refuse a second login of a user anywhere in the
            cluster (classic behaviour, errno 2) instead of allowing devices.
        offline_batch: Log entries carried in a classic login answer; the
            rest follow as pushes.
        sweep_interval: Seconds between two comparisons of every local user's
            log head with its sessions, a safety net for an announcement the
            bus lost without the node noticing (docs/delivery.md). 0 turns it off.
        cursor_interval: Seconds between two saves of the cursors that moved.
        read_batch: Log entries read per query when a session catches up.
        append_batch: Most messages appended in one transaction.
        append_linger: Seconds a batch of messages waits for more before it
            is appended (``LogWriter``).
        max_pending: Bytes of accepted messages waiting for their append
            above which the node stops reading from senders (back-pressure).
        login_attempts: Wrong passwords for one account before it must wait
            (1 s, doubling up to 5 min: docs/security.md).
        login_attempts_per_address: Wrong passwords from one address before
            it must wait.
        registrations_per_address: Registrations from one address before it
            must wait.
        max_refusals: Attempts refused for not waiting, on one connection,
            before it is closed.
        attempt_wait_base: The first wait after the free attempts, in
            seconds, doubled per further attempt.
        attempt_wait_cap: The longest wait.
        attempt_forget: Seconds without attempts after which a streak ends.
        attempt_keys: Accounts (and, apart, addresses) whose attempts are
            remembered at once; the oldest are forgotten first.
        max_logins_at_once: Logins and registrations the node works on at
            once; the others wait their turn (a login storm queues instead
            of flooding the event loop and the database pool).
        max_sessions_per_user: Sessions of one user on one node at once.
        max_group_size: Members of one group.
        max_friends: Friends of one user.
        group_cache_ttl: Seconds a group's cached members are trusted
            without a change announced.
        group_cache_size: Groups whose members are cached.
        user_cache_size: User ids known to exist, cached.
        log_throttle_interval: Seconds between two log lines of one kind
            that clients can cause.
        log_throttle_kinds: Kinds of such lines remembered.
        shutdown_timeout: Seconds a stopping node waits for the store to
            append what it accepted; then it stops anyway, and says how many
            messages it could not store (none of them was acknowledged).
    """

    single_session: bool
    offline_batch: int
    sweep_interval: float
    cursor_interval: float
    read_batch: int
    append_batch: int
    append_linger: float
    max_pending: int
    login_attempts: int
    login_attempts_per_address: int
    registrations_per_address: int
    max_refusals: int
    attempt_wait_base: float
    attempt_wait_cap: float
    attempt_forget: float
    attempt_keys: int
    max_logins_at_once: int
    max_sessions_per_user: int
    max_group_size: int
    max_friends: int
    group_cache_ttl: float
    group_cache_size: int
    user_cache_size: int
    log_throttle_interval: float
    log_throttle_kinds: int
    shutdown_timeout: float


@dataclass(slots=True)
class Context:
    node_id: str
    store: Store
    bus: Bus
    presence: Presence
    registry: SessionRegistry
    delivery: Delivery
    passwords: PasswordHasher
    limits: Limits
    policy: Policy
    ids: MessageIds = field(init=False)
    groups: GroupCache = field(init=False)
    group_channels: GroupChannels = field(init=False)
    users: KnownUsers = field(init=False)
    writer: LogWriter = field(init=False)
    cursors: CursorKeeper = field(init=False)
    attempts: Attempts = field(init=False)
    admission: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.ids = MessageIds(self.node_id)
        policy = self.policy
        self.groups = GroupCache(
            self.store, ttl=policy.group_cache_ttl, size=policy.group_cache_size
        )
        self.group_channels = GroupChannels(self.bus)
        self.users = KnownUsers(self.store, size=policy.user_cache_size)
        self.writer = LogWriter(
            self.store,
            max_batch=self.policy.append_batch,
            max_pending=self.policy.max_pending,
            linger=self.policy.append_linger,
        )
        self.cursors = CursorKeeper(self.store, self.policy.cursor_interval)
        self.admission = asyncio.Semaphore(self.policy.max_logins_at_once)
        self.attempts = Attempts(
            per_account=self.policy.login_attempts,
            per_address=self.policy.login_attempts_per_address,
            registrations=self.policy.registrations_per_address,
            max_refusals=self.policy.max_refusals,
            wait_base=policy.attempt_wait_base,
            wait_cap=policy.attempt_wait_cap,
            forget=policy.attempt_forget,
            max_keys=policy.attempt_keys,
        )
