"""Messages in arrival order: ``messages`` keyed by an id the database numbers.

Until 0003 a message was keyed by ``(conversation, seq)``, with ``seq``
counted per conversation, so every append put a whole row on a random page
of ``messages`` (and read the conversation's last ``seq`` first). Now
``messages.id`` (the rowid on SQLite) numbers every accepted message, an
append adds its rows at the end of the table, and the id is the message's
``seq`` (docs/protocol.md §3.1: increasing within each conversation, not
consecutive). ``inbox`` entries point at ``messages.id``.

The rows are copied in ``(conversation, seq)`` order, so within each
conversation the new ids keep the old order; every user's log keeps its
positions, so cursors stay valid. On SQLite and PostgreSQL it all happens
in one transaction (a failure leaves the database at 0003); MySQL commits
each DDL statement by itself.

Revision ID: 0004
Revises: 0003
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: MySQL/MariaDB: utf8mb4, compared byte for byte (names exactly, every emoji distinct).
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}
_MESSAGE_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BODY = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
#: The old rows, numbered in (conversation, seq) order: the new id of each.
_NUMBERED = (
    "SELECT conversation, seq, mid, sender_id, cid, time, body, created_at,"
    " row_number() OVER (ORDER BY conversation, seq) AS id FROM messages_0003"
)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    driver = bind.connection.driver_connection
    if dialect == "sqlite" and driver is not None and not driver.in_transaction:
        # sqlite3 begins a transaction only before a row is written, so the
        # renames and creates below would each commit alone: one transaction
        # for all (SQLite's DDL is transactional), committed with the revision.
        op.execute("BEGIN IMMEDIATE")
    # Out of the way first: index names are per schema on SQLite and PostgreSQL,
    # and foreign key names per database on MySQL (where an index stays with its
    # table, and this one serves the foreign key of sender_id).
    if dialect in ("mysql", "mariadb"):
        op.drop_constraint("fk_inbox_message", "inbox", type_="foreignkey")
    else:
        op.drop_index("uq_messages_sender_cid", table_name="messages")
    op.rename_table("inbox", "inbox_0003")
    op.rename_table("messages", "messages_0003")
    if dialect == "postgresql":
        # The primary keys' indexes keep their names through a rename.
        op.execute("ALTER INDEX messages_pkey RENAME TO messages_0003_pkey")
        op.execute("ALTER INDEX inbox_pkey RENAME TO inbox_0003_pkey")

    op.create_table(
        "messages",
        sa.Column("id", _MESSAGE_ID, primary_key=True, autoincrement=True),
        sa.Column("conversation", sa.String(32), nullable=False),
        sa.Column("mid", sa.String(64), nullable=False),
        sa.Column("sender_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("cid", sa.String(64), nullable=True),
        sa.Column("time", sa.String(19), nullable=False),
        sa.Column("body", _BODY, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **_MYSQL,
    )
    op.create_table(
        "inbox",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("pos", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(
            "message_id",
            _MESSAGE_ID,
            sa.ForeignKey("messages.id", name="fk_inbox_message"),
            nullable=False,
        ),
        sqlite_with_rowid=False,
        **_MYSQL,
    )
    op.execute(
        "INSERT INTO messages (id, conversation, mid, sender_id, cid, time, body, created_at)"
        " SELECT id, conversation, mid, sender_id, cid, time, body, created_at"
        f" FROM ({_NUMBERED}) AS numbered"
    )
    op.execute(
        "INSERT INTO inbox (user_id, pos, message_id)"
        " SELECT i.user_id, i.pos, numbered.id FROM inbox_0003 i"
        f" JOIN ({_NUMBERED}) AS numbered"
        " ON numbered.conversation = i.conversation AND numbered.seq = i.seq"
    )
    op.drop_table("inbox_0003")
    op.drop_table("messages_0003")
    op.create_index(
        "uq_messages_sender_cid",
        "messages",
        ["sender_id", "cid"],
        unique=True,
        sqlite_where=sa.text("cid IS NOT NULL"),
        postgresql_where=sa.text("cid IS NOT NULL"),
    )
    if dialect == "postgresql":
        # Rows with explicit ids leave the identity's sequence behind them.
        op.execute(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'),"
            " coalesce((SELECT max(id) FROM messages), 0) + 1, false)"
        )


def downgrade() -> None:
    raise NotImplementedError("clusterchat migrates forward only")
