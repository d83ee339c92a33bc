"""Read a database of the original C++ ChatServer, as it is (``../shared/CLASSIC-SCHEMA.md``).

Its five tables are read whole, in the shapes both found in the wild (the
course's dump and its design documents): ``user``, ``friend``, ``allgroup``,
``groupuser`` and ``offlinemessage``, found whatever the case of their names
(copies use ``User``, ``AllGroup``...). Nothing is written to it.

Text is read as bytes and decoded here: its columns are latin1 in tables that
are utf8, and clients wrote gbk or utf8 into them, so what the server would
convert is often already wrong. The bytes as stored are tried as UTF-8 (what
a utf8 client wrote into any column), then as GB 18030 (a superset of gbk, what
the course's ``set names gbk`` clients wrote), then as latin1, which decodes
anything; ``Decoded.guessed`` counts the values that were not UTF-8.

``offlinemessage`` has no ordering column: its rows are read in the order the
server returns them without ORDER BY, which for its InnoDB table (no key: a
hidden row id in insertion order) is the order they were stored.
"""

from dataclasses import dataclass, field

from sqlalchemy import Connection, inspect, text

__all__ = ["ClassicData", "Decoded", "MissingTable", "read_classic"]

_TABLES = ("user", "friend", "allgroup", "groupuser", "offlinemessage")


class MissingTable(Exception):
    """The source lacks one of the original's tables (it is not its database)."""


@dataclass
class Decoded:
    """How the source's text was decoded.

    Attributes:
        guessed: Values that were not valid UTF-8 (read as GB 18030 or latin1).
    """

    guessed: int = field(default_factory=int)

    def text(self, raw: bytes | None) -> str | None:
        """``raw`` as text (None stays None)."""
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.guessed += 1
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


@dataclass
class ClassicData:
    """Everything in the original's database, decoded, in the order it was read.

    Attributes:
        users: ``(id, name, password)``, name and password possibly None.
        friends: ``(userid, friendid)`` rows, duplicates included.
        groups: ``(id, groupname, groupdesc)``.
        members: ``(groupid, userid, grouprole)`` rows, duplicates included,
            role possibly None.
        offline: ``(userid, message)`` in stored order.
        decoded: How the text was decoded.
    """

    users: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    friends: list[tuple[int, int]] = field(default_factory=list)
    groups: list[tuple[int, str, str]] = field(default_factory=list)
    members: list[tuple[int, int, str | None]] = field(default_factory=list)
    offline: list[tuple[int, str]] = field(default_factory=list)
    decoded: Decoded = field(default_factory=Decoded)


def read_classic(conn: Connection) -> ClassicData:
    """Read the original's five tables through ``conn`` (a MySQL/MariaDB connection).

    Raises:
        MissingTable: One of them is not there.
    """
    names = {name.lower(): name for name in inspect(conn).get_table_names()}
    missing = [table for table in _TABLES if table not in names]
    if missing:
        raise MissingTable(
            f"no table {', '.join(missing)}: this is not a database of the original ChatServer"
        )
    user, friend, allgroup, groupuser, offline = (f"`{names[t]}`" for t in _TABLES)
    data = ClassicData()
    text_of = data.decoded.text
    for row in conn.execute(
        text(f"SELECT id, CAST(name AS BINARY), CAST(password AS BINARY) FROM {user} ORDER BY id")
    ):
        data.users.append((int(row[0]), text_of(row[1]), text_of(row[2])))
    for row in conn.execute(text(f"SELECT userid, friendid FROM {friend}")):
        data.friends.append((int(row[0]), int(row[1])))
    for row in conn.execute(
        text(
            f"SELECT id, CAST(groupname AS BINARY), CAST(groupdesc AS BINARY)"
            f" FROM {allgroup} ORDER BY id"
        )
    ):
        data.groups.append((int(row[0]), text_of(row[1]) or "", text_of(row[2]) or ""))
    for row in conn.execute(
        text(f"SELECT groupid, userid, CAST(grouprole AS CHAR) FROM {groupuser}")
    ):
        data.members.append((int(row[0]), int(row[1]), row[2]))
    for row in conn.execute(text(f"SELECT userid, CAST(message AS BINARY) FROM {offline}")):
        data.offline.append((int(row[0]), text_of(row[1]) or ""))
    return data
