"""--node-workers and --db: parsed, checked, redacted and said in the header (nothing started)."""

import pytest

from clusterchat.settings import redact_url
from clusterchat_bench.database import database_kind
from clusterchat_bench.header import header_lines
from clusterchat_bench.options import PRIVATE_POSTGRESQL, BenchOptions
from tests.unit.bench.test_header import MACHINE

CONFIGURATION = {
    "password_hashing": {
        "cheap_hashing": False,
        "argon2_time_cost": 2,
        "argon2_memory_kib": 19456,
        "defaults": {"argon2_time_cost": 2, "argon2_memory_kib": 19456},
    },
    "raised_for_load_generation": {"max_rate": {"default": 200, "bench": 100000}},
}


def _flags(**given: object) -> dict[str, object]:
    return {"quick": True, **given}


def test_defaults_are_one_process_per_node_on_its_own_sqlite() -> None:
    """Without the flags each node is one process and the database is the bench's own."""
    options = BenchOptions.from_flags(_flags())
    assert (options.node_workers, options.db) == (1, None)


def test_node_workers_and_db_are_taken() -> None:
    """--node-workers 2 --db postgresql, and --db with a URL, reach the options."""
    options = BenchOptions.from_flags(_flags(node_workers=2, db=PRIVATE_POSTGRESQL))
    assert (options.node_workers, options.db) == (2, "postgresql")
    url = "postgresql://chat:secret@10.0.0.7/chat"
    assert BenchOptions.from_flags(_flags(db=url)).db == url


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"node_workers": 0}, "--node-workers must be positive"),
        ({"db": "postgres"}, "--db: expected a database URL"),
        ({"db": "chat.db"}, "--db: expected a database URL"),
        ({"target": "127.0.0.1:6000", "db": "postgresql"}, "--db applies to the cluster"),
        ({"target": "127.0.0.1:6000", "node_workers": 2}, "--node-workers applies"),
    ],
)
def test_bad_values_are_refused_by_name(flags: dict[str, object], message: str) -> None:
    """Each bad combination raises ValueError naming the flag."""
    with pytest.raises(ValueError, match=message):
        BenchOptions.from_flags(_flags(scenario="pairs", **flags))


def test_passwords_never_leave_the_url() -> None:
    """redact_url hides a password and leaves URLs without one unchanged."""
    assert redact_url("postgresql://chat:secret@10.0.0.7:5432/chat") == (
        "postgresql://chat:***@10.0.0.7:5432/chat"
    )
    assert redact_url("sqlite:////tmp/chat.db") == "sqlite:////tmp/chat.db"
    assert database_kind("postgresql+asyncpg://u@h/d") == "postgresql"
    assert database_kind("sqlite:///x.db") == "sqlite"


def _own(**cluster: object) -> dict[str, object]:
    return {"mode": "own", "node_configuration": CONFIGURATION, **cluster}


def test_header_names_workers_and_database() -> None:
    """The header says how many processes a node is and which database the nodes share."""
    private = {
        "kind": "postgresql",
        "private_server": True,
        "server": "postgres (PostgreSQL) 15.18",
        "server_settings": "PostgreSQL's defaults",
    }
    lines = header_lines(MACHINE, _own(node_workers=2, database=private), quick=False)
    assert any(
        line.startswith("nodes: 2 worker processes each (--node-workers 2") for line in lines
    )
    assert any("CPU and RSS figures include its workers" in line for line in lines)
    assert any(
        line.startswith("database: postgresql, a private server started for this run")
        for line in lines
    )
    given = {"kind": "mysql", "private_server": False, "given": True, "url": "mysql://u:***@h/d"}
    lines = header_lines(MACHINE, _own(node_workers=1, database=given), quick=False)
    assert "nodes: one process each (--node-workers 1)" in lines
    assert "database: mysql given with --db (mysql://u:***@h/d), shared by the nodes" in lines
