"""The SQLite log writer processes nodes start for themselves (``clusterchat.store.log_server``).

Nobody's child (docs/delivery.md §Group commit), so they are found by their
command line in /proc; whoever stops a cluster's nodes may stop its writer
with them instead of letting it leave 2 s later by itself.
"""

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["log_writer_pids", "stop_log_writers"]


def log_writer_pids(db_path: str | Path) -> list[int]:
    """Pids of the log writers running for the SQLite file at ``db_path`` (not zombies)."""
    wanted = str(db_path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"clusterchat.store.log_server" in argv and wanted in argv:
            found.append(int(entry.name))
    return [pid for pid in found if _running(pid)]


def stop_log_writers(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids`` and wait up to ``timeout`` s for them to go; SIGKILL the
    rest. Returns those that had to be killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.02)
    killed = [pid for pid in pids if _running(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
