"""The durable log: messages once, every recipient's inbox, cursors per device.

Replaces the ``undelivered`` store (docs/delivery.md). Every undelivered push
becomes a log entry of its recipient, in the order it was stored: its message
once (a group message stored for several members is one message), numbered
per conversation in that order, and its recipient's entries at positions
1, 2, ... As no user has a cursor yet, every device of the user reads them
at its next login, as the classic offline messages were. A push whose JSON
cannot be read (it was written by clusterchat, so none should be) is kept as
a message from its recipient to themself, so that nothing stored is lost.

Revision ID: 0002
Revises: 0001
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: MySQL/MariaDB: utf8mb4, compared byte for byte (names exactly, every emoji distinct).
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}
_BATCH = 500

_undelivered = sa.table(
    "undelivered",
    sa.column("seq", sa.BigInteger),
    sa.column("user_id", sa.Integer),
    sa.column("mid", sa.String),
    sa.column("payload", sa.LargeBinary),
)


def upgrade() -> None:
    messages = op.create_table(
        "messages",
        sa.Column("conversation", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("mid", sa.String(64), nullable=False),
        sa.Column("sender_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("cid", sa.String(64), nullable=True),
        sa.Column("time", sa.String(19), nullable=False),
        # A MySQL BLOB holds 64 KiB; a push may be larger.
        sa.Column(
            "body",
            sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sqlite_with_rowid=False,
        **_MYSQL,
    )
    op.create_index(
        "uq_messages_sender_cid",
        "messages",
        ["sender_id", "cid"],
        unique=True,
        sqlite_where=sa.text("cid IS NOT NULL"),
        postgresql_where=sa.text("cid IS NOT NULL"),
    )
    inbox = op.create_table(
        "inbox",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("pos", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("conversation", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation", "seq"],
            ["messages.conversation", "messages.seq"],
            name="fk_inbox_message",
        ),
        sqlite_with_rowid=False,
        **_MYSQL,
    )
    op.create_table(
        "cursors",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("pos", sa.BigInteger, nullable=False),
        **_MYSQL,
    )
    assert messages is not None
    assert inbox is not None
    _move_undelivered(op.get_bind(), messages, inbox)
    op.drop_table("undelivered")


def _move_undelivered(conn: sa.Connection, messages: sa.Table, inbox: sa.Table) -> None:
    """Every undelivered push into the log, in the order it was stored."""
    placed: dict[str, tuple[str, int]] = {}  # mid -> (conversation, seq)
    last_seq: dict[str, int] = {}
    last_pos: dict[int, int] = {}
    after = -1
    while True:
        rows = conn.execute(
            sa.select(_undelivered)
            .where(_undelivered.c.seq > after)
            .order_by(_undelivered.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        new_messages: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        for row in rows:
            after = row.seq
            if row.mid not in placed:
                conversation, sender, time = _where(row.user_id, bytes(row.payload))
                seq = last_seq[conversation] = last_seq.get(conversation, 0) + 1
                placed[row.mid] = (conversation, seq)
                new_messages.append(
                    {
                        "conversation": conversation,
                        "seq": seq,
                        "mid": row.mid,
                        "sender_id": sender,
                        "cid": None,
                        "time": time,
                        "body": bytes(row.payload),
                    }
                )
            conversation, seq = placed[row.mid]
            pos = last_pos[row.user_id] = last_pos.get(row.user_id, 0) + 1
            entries.append(
                {"user_id": row.user_id, "pos": pos, "conversation": conversation, "seq": seq}
            )
        if new_messages:
            conn.execute(sa.insert(messages), new_messages)
        conn.execute(sa.insert(inbox), entries)


def _where(recipient: int, payload: bytes) -> tuple[str, int, str]:
    """(conversation, sender, time) of a stored push; a push that cannot be read is kept
    as a note from the recipient to themself."""
    try:
        push = json.loads(payload)
        sender = int(push["id"])
        time = str(push.get("time", ""))[:19]
        if "groupid" in push:
            return f"g:{int(push['groupid'])}", sender, time
        low, high = sorted((sender, recipient))
        return f"u:{low}:{high}", sender, time
    except (ValueError, TypeError, KeyError):
        return f"u:{recipient}:{recipient}", recipient, ""


def downgrade() -> None:
    raise NotImplementedError("clusterchat migrates forward only")
