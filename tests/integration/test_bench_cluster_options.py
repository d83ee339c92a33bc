"""``--node-workers`` and ``--db``: the bench's own cluster runs what they say; nothing is left.

Each test runs the bench for real (a subprocess: redis-server, two nodes,
load generators), as small as a run can be: 10 users, one step of 100
msgs/s. They check the recorded configuration, that the run lost nothing,
and that everything it started is gone; never a speed.
"""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import pid_gone
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

#: The bench package of this checkout (benchmarks/clusterchat_bench).
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
SMALL = ["--quick", "--scenario", "pairs", "--users", "10", "--rates", "100"]


def _bench(out: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``clusterchat bench`` small with ``args``; its bench.json and output."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "clusterchat", "bench", *SMALL, *args, "--out", str(out)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds(120),
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    report: dict[str, Any] = json.loads((out / "bench.json").read_text())
    return report, output


def _assert_nothing_lost(report: dict[str, Any]) -> None:
    assert report["errors"] == {}
    assert report["losses"] == []
    steps = report["pairs"]["run"]["steps"]
    assert steps
    for step in steps:
        assert step["delivered"] == step["expected"] > 0, step


def _gone(pid: int) -> bool:
    """No such process, or a zombie: the log writer is nobody's child, and an
    init that is slow to reap it leaves it a zombie for a while."""
    return pid_gone(pid)


def test_node_workers_and_a_given_database(tmp_path: Path) -> None:
    """--node-workers 2 --db sqlite:///FILE: supervisors of two workers on that file."""
    db = tmp_path / "given.db"
    report, output = _bench(tmp_path / "out", "--node-workers", "2", "--db", f"sqlite:///{db}")
    _assert_nothing_lost(report)
    assert report["options"]["node_workers"] == 2
    cluster = report["cluster"]
    assert cluster["node_workers"] == 2
    for name in ("n1", "n2"):
        argv = cluster["command_lines"][name]
        assert argv[argv.index("--workers") + 1] == "2"
        assert argv[argv.index("--db") + 1] == f"sqlite:///{db}"
        assert "2 workers listening on" in (tmp_path / "out" / "logs" / f"{name}.log").read_text()
    assert cluster["database"] == {
        "kind": "sqlite",
        "url": f"sqlite:///{db}",
        "private_server": False,
        "given": True,
    }
    assert "nodes: 2 worker processes each (--node-workers 2" in output
    assert "database: sqlite given with --db" in output
    # The users of the run are in the given file, which the bench leaves in place.
    with sqlite3.connect(db) as connection:
        (users,) = connection.execute("SELECT count(*) FROM users").fetchone()
    assert users >= 10
    for pids in cluster["pids"].values():
        assert all(_gone(pid) for pid in pids)


def _postgres_installed() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


@pytest.mark.skipif(not _postgres_installed(), reason="PostgreSQL is not installed")
def test_a_private_postgresql_server(tmp_path: Path) -> None:
    """--db postgresql: the nodes share a private server, stopped by pid with its files."""
    report, output = _bench(tmp_path / "out", "--db", "postgresql")
    _assert_nothing_lost(report)
    assert report["options"]["db"] == "postgresql"
    cluster = report["cluster"]
    database = cluster["database"]
    assert database["kind"] == "postgresql"
    assert database["private_server"] is True
    assert database["server"].startswith("postgres (PostgreSQL)")
    assert database["url"].startswith("postgresql://postgres@127.0.0.1:")
    for name in ("n1", "n2"):
        argv = cluster["command_lines"][name]
        assert argv[argv.index("--db") + 1] == database["url"]
    assert "database: postgresql, a private server started for this run" in output
    # Its CPU is measured with the rest, and it is gone afterwards.
    assert "postgres" in report["pairs"]["run"]["steps"][0]["cpu_percent"]
    (postmaster,) = cluster["pids"]["postgres"]
    assert _gone(postmaster)
    assert (tmp_path / "out" / "logs" / "postgres.log").exists()
