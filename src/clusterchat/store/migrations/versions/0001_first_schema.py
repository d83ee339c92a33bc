"""The first schema: users, friends, groups, and a per-user store of undelivered pushes.

What clusterchat created with ``metadata.create_all`` before the durable log
(until commit f5269c4). Frozen: a migration never imports ``schema.py``, whose
tables describe only the newest revision.

Revision ID: 0001
Revises:
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: MySQL/MariaDB: utf8mb4, compared byte for byte (names exactly, every emoji distinct).
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **_MYSQL,
    )
    op.create_table(
        "friends",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("friend_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        **_MYSQL,
    )
    op.create_table(
        "chat_groups",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **_MYSQL,
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer, sa.ForeignKey("chat_groups.id"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Index("ix_group_members_user", "user_id"),
        **_MYSQL,
    )
    op.create_table(
        "undelivered",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("mid", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Index("ix_undelivered_user_seq", "user_id", "seq"),
        **_MYSQL,
    )


def downgrade() -> None:
    raise NotImplementedError("clusterchat migrates forward only")
