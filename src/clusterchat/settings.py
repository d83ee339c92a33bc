"""One Settings object for a node: flags > ``CLUSTERCHAT_*`` environment > TOML file > defaults.

Every field can be set in each of the four places; the environment variable
is ``CLUSTERCHAT_`` + the field name in capitals (``CLUSTERCHAT_PORT``,
``CLUSTERCHAT_DB``...), the TOML key is the field name.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ENV_PREFIX", "Settings", "redact_url"]

ENV_PREFIX = "CLUSTERCHAT_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one chat node (docs/operations.md lists every field)."""

    host: str = "127.0.0.1"
    port: int = 6000
    db: str = "sqlite:///clusterchat.db"
    redis: str | None = None
    node_id: str | None = None
    prefix: str = "clusterchat"
    single_session: bool = False
    max_frame: int = 64 * 1024
    max_message: int = 8192
    max_rate: float = 200.0
    max_burst: float = 1000.0
    login_timeout: float = 120.0
    stall_timeout: float = 60.0
    max_connections: int = 10_000
    max_per_address: int = 100
    proxy_protocol: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    offline_batch: int = 1000
    login_attempts: int = 5
    login_attempts_per_address: int = 20
    registrations_per_address: int = 10
    max_sessions_per_user: int = 10
    max_group_size: int = 1000
    max_friends: int = 1000
    sweep_interval: float = 30.0
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
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
