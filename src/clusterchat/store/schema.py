"""The tables, one MetaData. Keys make duplicates impossible (docs/architecture.md §Store)."""

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)

__all__ = ["chat_groups", "friends", "group_members", "metadata", "undelivered", "users"]

metadata = MetaData()

# MySQL/MariaDB: utf8mb4 so that any Unicode name or message round-trips.
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}
_SEQ = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    **_MYSQL,
)

friends = Table(
    "friends",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("friend_id", Integer, ForeignKey("users.id"), primary_key=True),
    **_MYSQL,
)

chat_groups = Table(
    "chat_groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", String(256), nullable=False, default=""),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    **_MYSQL,
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("chat_groups.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("role", String(16), nullable=False),
    Index("ix_group_members_user", "user_id"),
    **_MYSQL,
)

undelivered = Table(
    "undelivered",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("mid", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Index("ix_undelivered_user_seq", "user_id", "seq"),
    **_MYSQL,
)
