"""The tables, one MetaData. Keys make duplicates impossible (docs/architecture.md §Store).

These are the tables of the newest migration (``store/migrations/versions``):
the migrations create and change the database, and a test checks that what
they build is exactly this.
"""

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects import mysql

__all__ = [
    "chat_groups",
    "cursors",
    "friend_requests",
    "friends",
    "group_invites",
    "group_members",
    "inbox",
    "messages",
    "metadata",
    "users",
]

metadata = MetaData()

# MySQL/MariaDB: utf8mb4 so that any Unicode name or message round-trips, and
# its binary collation so that names compare exactly, as on SQLite and
# PostgreSQL (utf8mb4's default collation folds case: "alice" would take "Alice").
# Every table says so itself: a database created with the server's default
# character set (latin1 on MariaDB) must not decide.
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    # Unique: two names that could be taken for each other (service/names.py).
    Column("name_key", String(255), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    UniqueConstraint("name_key", name="uq_users_name_key"),
    **_MYSQL,
)

friends = Table(
    "friends",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("friend_id", Integer, ForeignKey("users.id"), primary_key=True),
    **_MYSQL,
)

# A friend request from one user to another, waiting for the other's consent
# (docs/protocol.md §2.5); it becomes two ``friends`` rows when accepted.
friend_requests = Table(
    "friend_requests",
    metadata,
    Column("from_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("to_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Index("ix_friend_requests_to", "to_id"),
    **_MYSQL,
)

chat_groups = Table(
    "chat_groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("name_key", String(255), nullable=False),
    Column("description", String(256), nullable=False, default=""),
    # Joining needs an invitation from the creator (docs/protocol.md §2.7).
    # false(): rendered per dialect (PostgreSQL refuses an integer default for a boolean).
    Column("invite_only", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    UniqueConstraint("name_key", name="uq_chat_groups_name_key"),
    **_MYSQL,
)

group_invites = Table(
    "group_invites",
    metadata,
    Column("group_id", Integer, ForeignKey("chat_groups.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
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

# --- the message log (docs/delivery.md) ------------------------------------------------
#
# ``messages`` holds each accepted message once (its body is the push as written
# to clients), keyed by ``id``, the cluster's count of accepted messages: an
# append puts its rows at the end of this table, never on a random page. The
# id is the message's ``seq`` (docs/protocol.md §3.1): it increases within each
# conversation in the order the log accepted its messages. ``inbox`` is every
# recipient's log: one small row per recipient and message, at consecutive
# positions, read as the max of the primary key (no counter rows). On SQLite
# ``inbox`` is one B-tree (WITHOUT ROWID) and ``messages.id`` the rowid, so a
# one-to-one message costs one insert at a random place (its recipient's log)
# and one at the end of ``messages`` (docs/performance.md measures why that
# matters). ``cursors`` remembers how far each device of a user has read its log.
_BODY = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
#: SQLite makes only an ``INTEGER PRIMARY KEY`` the rowid (BIGINT would be a second key).
_MESSAGE_ID = BigInteger().with_variant(Integer(), "sqlite")
messages = Table(
    "messages",
    metadata,
    Column("id", _MESSAGE_ID, primary_key=True, autoincrement=True),
    # The pair or group (store/base.py ``NewMessage.conversation``).
    Column("conversation", String(32), nullable=False),
    Column("mid", String(64), nullable=False),
    Column("sender_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("cid", String(64), nullable=True),
    Column("time", String(19), nullable=False),
    # MySQL's BLOB holds 65,535 bytes: a push of raised limits (or of 8,192
    # escaped characters) can be larger. MEDIUMBLOB holds 16 MiB.
    Column("body", _BODY, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    # Only messages that carry a client id are indexed by it (MySQL, which has
    # no partial index, indexes every row; its NULLs never collide).
    Index(
        "uq_messages_sender_cid",
        "sender_id",
        "cid",
        unique=True,
        sqlite_where=text("cid IS NOT NULL"),
        postgresql_where=text("cid IS NOT NULL"),
    ),
    **_MYSQL,
)
inbox = Table(
    "inbox",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("pos", BigInteger, primary_key=True, autoincrement=False),
    Column(
        "message_id",
        _MESSAGE_ID,
        ForeignKey("messages.id", name="fk_inbox_message"),
        nullable=False,
    ),
    sqlite_with_rowid=False,
    **_MYSQL,
)
cursors = Table(
    "cursors",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("pos", BigInteger, nullable=False),
    **_MYSQL,
)
