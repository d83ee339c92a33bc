"""``clusterchat import-classic`` (issue 11): the original ChatServer's database brought over.

The source is a real MariaDB loaded with the course dump's shape and sample
data (tests/data/classic_chat.sql) plus the quirks the original leaves
behind: duplicate and dangling friend and membership rows, one-way
friendships, a user without name or password, UTF-8 text written through a
latin1 connection into a latin1 column, and an offline message cut at 500
bytes. After the import a classic client logs in with the original's ids and
passwords and gets what was waiting for it, in order.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.classic import ClassicClient
from tests.support.database import migrated
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeFactory, NodeHandle
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

DUMP = Path(__file__).parent.parent / "data" / "classic_chat.sql"
LONG = '{"id":13,"msg":"' + "x" * 600 + '","msgid":6,"name":"zhang san","toid":15}'
HELLO = {"id": 13, "msg": "你好 🙂", "msgid": 6, "name": "zhang san", "toid": 15, "time": "t1"}
AFTER = {"id": 21, "msg": "after", "msgid": 6, "name": "gao yang", "toid": 15, "time": "t2"}
QUIRKS = f"""
INSERT INTO friend VALUES (13,15),(13,99),(16,16);
INSERT INTO groupuser VALUES (1,21,'normal'),(1,18,NULL),(7,13,'creator');
INSERT INTO user (id, name, password) VALUES (22, NULL, NULL);
SET NAMES latin1;
INSERT INTO offlinemessage VALUES (15, '{json.dumps(HELLO, ensure_ascii=False)}');
SET NAMES utf8;
INSERT INTO offlinemessage VALUES (15, '{LONG[:500]}');
INSERT INTO offlinemessage VALUES (15, '{json.dumps(AFTER)}');
"""

TARGETS = ["sqlite", "postgresql", "mariadb"]


@pytest.fixture
def classic_db(mariadb_server: MariaDBServer) -> str:
    """A database of the original ChatServer on the session's MariaDB; its URL."""
    url = mariadb_server.create_database()
    name = url.rsplit("/", 1)[1]
    mariadb_server.sql(DUMP.read_text(), name)
    mariadb_server.sql(QUIRKS, name)
    return url


def _target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'chat.db'}"
    elif kind == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    else:
        url = str(request.getfixturevalue("mariadb_url"))
    return migrated(url)


def _import(source: str, target: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clusterchat", "import-classic", "--from", source]
    return subprocess.run(
        [*argv, "--db", target], capture_output=True, text=True, timeout=seconds(300)
    )


def _waiting(client: ClassicClient, answer: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The ``count`` stored messages a login brings: in its answer, then as pushes
    (the answer carries what fits a classic client's buffer)."""
    messages = [json.loads(text) for text in answer.get("offlinemsg", [])]
    while len(messages) < count:
        push = client.receive()
        assert push["msgid"] in (6, 10), push
        messages.append(push)
    assert len(messages) == count
    return messages


def _login(node: NodeHandle, user_id: int, password: str) -> tuple[ClassicClient, dict[str, Any]]:
    client = ClassicClient(node.host, node.port)
    return client, client.request({"msgid": 1, "id": user_id, "password": password})


@pytest.mark.parametrize("kind", TARGETS)
def test_the_original_database_comes_over_and_its_users_log_in(
    kind: str,
    classic_db: str,
    node_factory: NodeFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    target = _target(kind, request, tmp_path)
    done = _import(classic_db, target)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    assert "users: 7 read, 7 new (1 without a name, 1 without a password" in report
    assert "friends: 7 rows, 3 friendships made mutual, 3 new, 2 rows skipped" in report
    assert "groups: 1 read, 1 new; members: 6 rows, 4 members, 4 new, 1 rows skipped" in report
    assert "offline messages: 8 rows, 8 messages, 8 new (1 with broken JSON kept as text)" in report
    assert "Traceback" not in done.stderr

    node = node_factory(db_url=target)
    zhang, answer = _login(node, 13, "123456")
    assert answer["errno"] == 0, answer
    assert answer["name"] == "zhang san"
    friends = sorted(json.loads(f)["id"] for f in answer["friends"])
    assert friends == [15, 21]
    zhang.close()

    li, answer = _login(node, 15, "666666")
    assert answer["errno"] == 0, answer
    friends = sorted(json.loads(f)["id"] for f in answer["friends"])
    assert friends == [13, 21]  # the original showed li none: its rows were one-way
    offline = _waiting(li, answer, 3)
    assert [m["msg"] for m in offline[::2]] == ["你好 🙂", "after"]
    assert offline[1]["msg"] == LONG[:500]  # cut by the original: kept as text
    assert [m["id"] for m in offline] == [13, 13, 21]
    li.close()

    pipi, answer = _login(node, 19, "123456")
    assert answer["errno"] == 0, answer
    offline = _waiting(pipi, answer, 5)
    assert [m["msg"] for m in offline] == [
        "hello",
        "hello!!!",
        "hahahahaha",
        "hahahahaha",
        "wowowowo",
    ]
    assert {m["groupid"] for m in offline} == {1}
    group = json.loads(answer["groups"][0])
    assert group["groupname"] == "C++ chat project"
    roles = {json.loads(u)["id"]: json.loads(u)["role"] for u in group["users"]}
    assert roles == {13: "creator", 21: "normal", 19: "normal", 18: "normal"}
    pipi.close()

    nobody, answer = _login(node, 22, "")
    assert answer["errno"] != 0  # no password in the original: this account cannot log in
    nobody.close()
    client = ClassicClient(node.host, node.port)
    registered = client.request({"msgid": 4, "name": "new user", "password": "pw"})
    assert registered["errno"] == 0, registered
    assert registered["id"] > 22  # ids continue after the imported ones
    client.close()

    again = _import(classic_db, target)
    assert again.returncode == 0, again.stderr
    assert "users: 7 read, 0 new" in again.stdout
    assert "3 friendships made mutual, 0 new" in again.stdout
    assert "1 read, 0 new; members: 6 rows, 4 members, 0 new" in again.stdout
    assert "8 messages, 0 new" in again.stdout


def test_conflicting_users_stop_the_import_before_anything_is_written(
    classic_db: str, node_factory: NodeFactory, tmp_path: Path
) -> None:
    target = migrated(f"sqlite:///{tmp_path / 'chat.db'}")
    node = node_factory(db_url=target)
    client = ClassicClient(node.host, node.port)
    taken = client.request({"msgid": 4, "name": "Zhang San", "password": "pw"})
    assert taken["errno"] == 0, taken
    client.close()
    done = _import(classic_db, target)
    assert done.returncode == 1
    assert "conflicts, nothing written" in done.stderr
    assert f"user 13 'zhang san': user {taken['id']} here has that name" in done.stderr
    client = ClassicClient(node.host, node.port)
    answer = client.request({"msgid": 1, "id": 15, "password": "666666"})
    assert answer["errno"] != 0  # li si was not imported
    client.close()


def test_a_source_that_is_not_the_original_is_refused(
    mariadb_server: MariaDBServer, tmp_path: Path
) -> None:
    source = mariadb_server.create_database()
    target = migrated(f"sqlite:///{tmp_path / 'chat.db'}")
    done = _import(source, target)
    assert done.returncode == 1
    assert "not a database of the original ChatServer" in done.stderr
    unmigrated = _import(source, f"sqlite:///{tmp_path / 'empty.db'}")
    assert unmigrated.returncode == 1
    assert "run: clusterchat db upgrade --db" in unmigrated.stderr
