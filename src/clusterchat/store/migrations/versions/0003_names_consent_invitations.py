"""Names that cannot lie, friendship by consent, invite-only groups.

Adds ``name_key`` to users and groups (docs/security.md: a name is stored in
its PRECIS Nickname form, and the key of a name is its confusable skeleton,
unique), ``chat_groups.invite_only``, ``friend_requests`` and
``group_invites``.

The names already stored are checked, in id order, with the same rules that
refuse new names (``clusterchat/names.py``):

* a name that is valid gets its key, and is rewritten in its normal form if
  that differs (fullwidth ``alice`` becomes ``alice``) and no other row has it;
* a name the rules refuse (a control or invisible character), or whose key
  an earlier row already holds (``alice`` with a Cyrillic a beside ``alice``),
  is kept as it is, so its owner still logs in and is shown as before, but
  reserves nothing: its key is ``!unchecked:<id>``. Each such row is logged
  as a warning (``clusterchat db upgrade`` prints them).

Revision ID: 0003
Revises: 0002
"""

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from clusterchat import names

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("clusterchat.migrate")

#: MySQL/MariaDB: utf8mb4, compared byte for byte (names exactly, every emoji distinct).
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}
_BATCH = 1000


def upgrade() -> None:
    for table in ("users", "chat_groups"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("name_key", sa.String(255), nullable=True))
        _check_names(op.get_bind(), table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("name_key", existing_type=sa.String(255), nullable=False)
            batch.create_unique_constraint(f"uq_{table}_name_key", ["name_key"])
    with op.batch_alter_table("chat_groups") as batch:
        batch.add_column(
            sa.Column("invite_only", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_table(
        "friend_requests",
        sa.Column("from_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("to_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Index("ix_friend_requests_to", "to_id"),
        **_MYSQL,
    )
    op.create_table(
        "group_invites",
        sa.Column("group_id", sa.Integer, sa.ForeignKey("chat_groups.id"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        **_MYSQL,
    )


def _check_names(conn: sa.Connection, name: str) -> None:
    """Give every row of ``name`` (users or chat_groups) its key, in id order."""
    table = sa.table(
        name,
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("name_key", sa.String),
    )
    stored = {row.name for row in conn.execute(sa.select(table.c.name))}
    taken: dict[str, int] = {}  # key -> id of the row that holds it
    kind = "user" if name == "users" else "group"
    after = 0
    while True:
        rows = conn.execute(
            sa.select(table.c.id, table.c.name)
            .where(table.c.id > after)
            .order_by(table.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            after = row.id
            update: dict[str, Any] = {"name_key": f"!unchecked:{row.id}"}
            try:
                normal = names.normalize(row.name)
                key = names.look_alike_key(normal)
            except names.NameRefused as exc:
                log.warning("%s %d %r: %s; kept as it is", kind, row.id, row.name, exc)
            else:
                if key in taken:
                    log.warning(
                        "%s %d %r looks like %s %d; kept as it is, reserving nothing",
                        kind,
                        row.id,
                        row.name,
                        kind,
                        taken[key],
                    )
                else:
                    taken[key] = row.id
                    update["name_key"] = key
                    if normal != row.name and normal not in stored:
                        update["name"] = normal
                        stored.add(normal)
            conn.execute(sa.update(table).where(table.c.id == row.id).values(**update))


def downgrade() -> None:
    raise NotImplementedError("clusterchat migrates forward only")
