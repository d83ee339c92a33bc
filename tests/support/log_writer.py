"""The SQLite log writer processes that nodes start (``clusterchat.store.log_server``).

A node starts the writer of its SQLite file when none runs; the writer is
nobody's child and exits ``IDLE_EXIT`` seconds after its last node left. The
node fixture stops it by pid once the test's nodes are gone (SIGTERM, as an
operator would), so that no test leaves one behind or waits for it;
tests/integration/test_log_writer_process.py checks that it leaves by itself.
"""

import os
import signal
from pathlib import Path

from clusterchat.cluster.log_writers import log_writer_pids
from clusterchat.cluster.log_writers import stop_log_writers as stop_pids
from clusterchat.store.log_server import IDLE_EXIT
from tests.support.processes import pid_gone, wait_until

__all__ = ["stop_log_writers", "wait_for_log_writers_to_exit"]


def wait_for_log_writers_to_exit(db_path: str | Path) -> list[int]:
    """Wait for the writers of ``db_path`` to exit on their own (their nodes are gone);
    SIGKILL any still running after twice ``IDLE_EXIT`` plus a margin. Returns those killed."""
    pids = log_writer_pids(db_path)
    if not pids:
        return []
    wait_until(lambda: all(pid_gone(pid) for pid in pids), timeout=2 * IDLE_EXIT + 5)
    killed = [pid for pid in pids if not pid_gone(pid)]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    return killed


def stop_log_writers(db_path: str | Path) -> list[int]:
    """SIGTERM the writers of ``db_path`` and wait for them; SIGKILL any still
    running after 10 s. Returns those that had to be killed."""
    return stop_pids(log_writer_pids(db_path), timeout=10)
