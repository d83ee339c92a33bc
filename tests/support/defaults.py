"""The components' parameters for tests that build them directly, from ``Settings()``.

Tests never write a default of their own: they start from the node's defaults
(``clusterchat.settings``) and change only what the test is about, by
setting name (``policy_with(max_friends=1)``), so a misspelt name fails.
"""

from dataclasses import replace
from typing import Any

from clusterchat.node import password_hasher
from clusterchat.protocol import Limits
from clusterchat.service.context import Policy
from clusterchat.service.passwords import PasswordHasher
from clusterchat.settings import Settings
from clusterchat.transport.tcp import ConnectionLimits

__all__ = [
    "LIMITS",
    "SETTINGS",
    "bus_timing",
    "cheap_passwords",
    "connection_limits_with",
    "limits_with",
    "policy_with",
    "presence_timing",
]

#: The defaults, as a node without configuration has them.
SETTINGS = Settings()
#: The protocol limits of a default node.
LIMITS = SETTINGS.pick(Limits)


def limits_with(**changes: Any) -> Limits:
    """A default node's protocol limits, with ``changes`` (setting names)."""
    return replace(SETTINGS, **changes).pick(Limits)


def policy_with(**changes: Any) -> Policy:
    """A default node's service policy, with ``changes`` (setting names)."""
    return replace(SETTINGS, **changes).pick(Policy)


def connection_limits_with(**changes: Any) -> ConnectionLimits:
    """A default node's connection limits, with ``changes`` (setting names)."""
    return replace(SETTINGS, **changes).pick(ConnectionLimits)


def bus_timing(**changes: Any) -> dict[str, Any]:
    """A default node's ``RedisBus`` timing arguments, with ``changes`` (argument names)."""
    return {
        "probe_interval": SETTINGS.redis_probe_interval,
        "publish_timeout": SETTINGS.redis_publish_timeout,
        "connect_timeout": SETTINGS.redis_connect_timeout,
        "backoff_base": SETTINGS.redis_backoff_base,
        "backoff_cap": SETTINGS.redis_backoff_cap,
    } | changes


def presence_timing(**changes: Any) -> dict[str, Any]:
    """A default node's ``RedisPresence`` timing arguments, with ``changes`` (argument names)."""
    return {
        "heartbeat_interval": SETTINGS.presence_heartbeat,
        "expiry": SETTINGS.presence_expiry,
    } | changes


def cheap_passwords() -> PasswordHasher:
    """A hasher at argon2's cheapest cost, for tests that log in many times.

    The cost is the one thing tests change: a default node's 19 MiB hash would
    make the service suite minutes longer and test nothing more.
    """
    return password_hasher(replace(SETTINGS, argon2_time_cost=1, argon2_memory_kib=1024))
