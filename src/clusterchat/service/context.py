"""What every request handler needs: the node's backends and its per-node state."""

from dataclasses import dataclass, field

from clusterchat.bus.base import Bus
from clusterchat.presence.base import Presence
from clusterchat.protocol import Limits
from clusterchat.service.delivery import Delivery
from clusterchat.service.groups_cache import GroupCache
from clusterchat.service.ids import MessageIds
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
        offline_batch: Stored messages carried in one login answer; the rest
            follow as pushes.
        sweep_interval: Seconds between two drains of the store for every
            user online on this node, a safety net for stored messages whose
            DRAIN notice was lost (docs/delivery.md). 0 turns it off.
    """

    single_session: bool = False
    offline_batch: int = 1000
    sweep_interval: float = 30.0


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

    def __post_init__(self) -> None:
        self.ids = MessageIds(self.node_id)
        self.groups = GroupCache(self.store)
        self.users = KnownUsers(self.store)
