"""One Settings object for a node: flags > ``CLUSTERCHAT_*`` environment > TOML file > defaults.

Every field can be set in each of the four places; the environment variable
is ``CLUSTERCHAT_`` + the field name in capitals (``CLUSTERCHAT_PORT``,
``CLUSTERCHAT_DB``...), the TOML key is the field name.

This class is the one place where a default value is written. The components
take plain values: ``Limits`` (protocol), ``Policy`` (service) and
``ConnectionLimits`` (transport) are dataclasses without defaults, built by
``Settings.pick`` from the settings of the same names; the composition root
(``clusterchat.node``) passes the other values one by one. Nothing below this
module reads the environment. ``tests/unit/test_settings.py`` checks that no
component writes a second default.
"""

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ENV_PREFIX", "Settings", "redact_url"]

ENV_PREFIX = "CLUSTERCHAT_"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one chat node (docs/operations.md lists every field)."""

    # Where the node listens and what it joins.
    host: str = "127.0.0.1"
    port: int = 6000
    db: str = "sqlite:///clusterchat.db"
    db_pool_size: int = 5
    # Seconds a stopping node waits for the database to take what it accepted.
    shutdown_timeout: float = 30.0
    # Seconds an append waits for another node's append to the same users (PostgreSQL, MySQL).
    db_lock_timeout: int = 10
    redis: str | None = None
    node_id: str | None = None
    prefix: str = "clusterchat"
    # Redis bus (``clusterchat.bus.redis.RedisBus``) and presence.
    redis_probe_interval: float = 2.0
    redis_publish_timeout: float = 2.0
    redis_connect_timeout: float = 2.0
    redis_backoff_base: float = 0.1
    redis_backoff_cap: float = 5.0
    presence_heartbeat: float = 1.0
    presence_expiry: float = 5.0
    # Protocol limits (``clusterchat.protocol.Limits``).
    max_frame: int = 64 * 1024
    max_depth: int = 16
    max_name: int = 64
    max_password: int = 256
    max_group_name: int = 64
    max_group_desc: int = 256
    max_message: int = 8192
    max_token: int = 64
    # Connection limits (``clusterchat.transport.tcp.ConnectionLimits``).
    max_rate: float = 200.0
    max_burst: float = 1000.0
    high_water: int = 64 * 1024
    max_outbound: int = 4 * 1024 * 1024
    stall_timeout: float = 60.0
    send_buffer: int = 64 * 1024
    max_backlog: int = 256
    login_timeout: float = 120.0
    max_connections: int = 10_000
    max_per_address: int = 100
    proxy_protocol: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # Service policy (``clusterchat.service.context.Policy``).
    single_session: bool = False
    # Node processes sharing the port with SO_REUSEPORT (0: one per core);
    # reuse_port is what each of them is started with (cluster/workers.py).
    workers: int = 0
    reuse_port: bool = False
    offline_batch: int = 1000
    sweep_interval: float = 30.0
    cursor_interval: float = 0.05
    read_batch: int = 500
    append_batch: int = 2000
    append_linger: float = 0.003
    max_pending: int = 8 * 1024 * 1024
    login_attempts: int = 5
    login_attempts_per_address: int = 20
    registrations_per_address: int = 10
    max_refusals: int = 3
    attempt_wait_base: float = 1.0
    attempt_wait_cap: float = 300.0
    attempt_forget: float = 900.0
    attempt_keys: int = 100_000
    max_logins_at_once: int = 16
    max_sessions_per_user: int = 10
    max_group_size: int = 1000
    max_friends: int = 1000
    group_cache_ttl: float = 60.0
    group_cache_size: int = 10_000
    user_cache_size: int = 100_000
    # Lines clients can cause: at most one per kind per interval (service and transport).
    log_throttle_interval: float = 60.0
    log_throttle_kinds: int = 256
    # Password hashing (``clusterchat.service.passwords.PasswordHasher``).
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    hash_workers: int = 0
    log_level: str = "INFO"

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config: Path | None = None,
    ) -> "Settings":
        """Merge the four sources; ``flags`` entries that are None count as unset.

        Raises:
            ValueError: a value cannot be converted to the field's type.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if config is not None:
            with config.open("rb") as file:
                values.update(tomllib.load(file))
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = raw
        for name, value in (flags or {}).items():
            if value is not None:
                values[name] = value
        known = {field.name: field for field in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls()
        converted = {name: _convert(known[name].default, name, v) for name, v in values.items()}
        return replace(settings, **converted)

    def pick(self, cls: Callable[..., _T]) -> _T:
        """Build the dataclass ``cls`` from the settings named like its fields.

        This is how a component's parameters (``Limits``, ``Policy``,
        ``ConnectionLimits``) get their values without writing defaults of
        their own.

        Args:
            cls: A dataclass whose every field is named like a setting.

        Returns:
            ``cls(**{field: getattr(self, field) for field in cls's fields})``.

        Raises:
            TypeError: ``cls`` is not a dataclass, or has a field that is no setting.
        """
        names = [field.name for field in fields(cast(Any, cls)) if field.init]
        unknown = [name for name in names if name not in _NAMES]
        if unknown:
            raise TypeError(f"{cls!r} has fields that are no settings: {', '.join(unknown)}")
        return cls(**{name: getattr(self, name) for name in names})


_NAMES = frozenset(field.name for field in fields(Settings))


def _convert(default: Any, name: str, value: Any) -> Any:
    if not isinstance(value, str) or default is MISSING:
        return value
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    return value or None if default is None else value


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    hosts = parts.netloc.rpartition("@")[2]  # as written: one host, or a cluster's list
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
