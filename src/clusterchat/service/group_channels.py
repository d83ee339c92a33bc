"""GroupChannels: the group channels this node listens on, one per group of its users.

Theory of operation (docs/cluster.md, "Group fan-out: one log entry per member,
one PUBLISH per message"; docs/delivery.md, "Sending"):

A group message is published **once**, on its group's channel
(``group:<id>``), with every member's log position in the envelope; each
node with members of the group logged in receives it once and offers it to
its own members' feeds. So a node must be subscribed to the channel of every
group that one of its logged-in users belongs to, and this class keeps that
set:

* ``enter(user, groups)`` at login (before the log is read, like the user's
  own channel: a message is then either in what the login reads or
  announced after) and when a local user joins a group (here, or on another
  node: the join's ``GROUP_CHANGED`` names the user);
* ``leave(user)`` when the user's last session on this node ends;
* ``channels()`` for the bus to resubscribe after an outage.

A group channel is subscribed while at least one local user is in the
group. Changes to one group's subscription are serialised by a lock per
group (striped), and each call brings the subscription in line with the set
of users at that moment, so interleaved logins and logouts end subscribed
exactly when someone is there. Nothing here decides whether a message is
delivered: a node that misses a group envelope (not yet subscribed, a join
notice lost while the bus was down) sees the gap at the user's next envelope
or sweep and reads the log.
"""

import asyncio
from collections.abc import Iterable, Iterator

from clusterchat.bus.base import Bus
from clusterchat.bus.channels import ChannelNames

__all__ = ["GroupChannels"]

_STRIPES = 256


class GroupChannels:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._members: dict[int, set[int]] = {}  # group id -> its local users
        self._groups: dict[int, set[int]] = {}  # local user id -> their groups
        self._subscribed: set[int] = set()
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]

    def channels(self) -> Iterator[str]:
        """The bare channels this node must listen on now."""
        return (ChannelNames.group(group_id) for group_id in list(self._members))

    def subscribed(self, group_id: int) -> bool:
        return group_id in self._subscribed

    async def enter(self, user_id: int, group_ids: Iterable[int]) -> None:
        """``user_id`` (logged in here) is in these groups: listen on their channels.

        Returns once every one of them is subscribed (by this call or by one
        running for another user of the same group).
        """
        wanted = list(group_ids)
        if not wanted:  # no empty set per idle user (docs/performance.md, "Idle connections")
            return
        groups = self._groups.setdefault(user_id, set())
        for group_id in wanted:
            groups.add(group_id)
            self._members.setdefault(group_id, set()).add(user_id)
        await asyncio.gather(*(self._sync(group_id) for group_id in wanted))

    async def leave(self, user_id: int) -> None:
        """``user_id``'s last session here ended: stop listening where nobody is left."""
        groups = self._groups.pop(user_id, set())
        for group_id in groups:
            users = self._members.get(group_id)
            if users is not None:
                users.discard(user_id)
                if not users:
                    del self._members[group_id]
        await asyncio.gather(*(self._sync(group_id) for group_id in groups))

    async def _sync(self, group_id: int) -> None:
        """Subscribe or unsubscribe ``group_id``'s channel to match its local users."""
        async with self._locks[group_id % _STRIPES]:
            wanted = group_id in self._members
            if wanted == (group_id in self._subscribed):
                return
            channel = ChannelNames.group(group_id)
            if wanted:
                await self._bus.subscribe(channel)
                self._subscribed.add(group_id)
            else:
                self._subscribed.discard(group_id)
                await self._bus.unsubscribe(channel)
