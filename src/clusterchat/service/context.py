"""What every request handler needs: the node's backends and its per-node state."""

from dataclasses import dataclass, field

from clusterchat.bus.base import Bus
from clusterchat.presence.base import Presence
from clusterchat.protocol import Limits
from clusterchat.service.cursors import CursorKeeper
from clusterchat.service.delivery import Delivery
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
        max_pending: Bytes of accepted messages waiting for their append
            above which the node stops reading from senders (back-pressure).
    """

    single_session: bool = False
    offline_batch: int = 1000
    sweep_interval: float = 30.0
    cursor_interval: float = 0.05
    read_batch: int = 500
    append_batch: int = 2000
    max_pending: int = 8 * 1024 * 1024


@dataclass(slots=True)
class Context:
    node_id: str
    store: Store
    bus: Bus
    presence: Presence
    registry: SessionRegistry
    delivery: Delivery
    passwords: PasswordHasher
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    ids: MessageIds = field(init=False)
    groups: GroupCache = field(init=False)
    users: KnownUsers = field(init=False)
    writer: LogWriter = field(init=False)
    cursors: CursorKeeper = field(init=False)

    def __post_init__(self) -> None:
        self.ids = MessageIds(self.node_id)
        self.groups = GroupCache(self.store)
        self.users = KnownUsers(self.store)
        self.writer = LogWriter(
            self.store, max_batch=self.policy.append_batch, max_pending=self.policy.max_pending
        )
        self.cursors = CursorKeeper(self.store, self.policy.cursor_interval)
