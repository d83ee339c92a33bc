"""``benchmarks/builds_ab.py``: two builds benched in turn, and nothing left running.

Both "builds" are this checkout's ``src`` here, with a tiny load: the test
checks that each run produced its figures under its own name, that nothing
was lost, and that every process the script started (Redis, the nodes, the
SQLite log writer) is gone afterwards, and that the bench found the nodes
and the log writer behind the addresses it was given (their CPU per message
is reported). It never checks a speed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.timing import seconds

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in argv and state != "Z":
            found.append(argv)
    return found


def test_two_builds_are_benched_in_turn_and_stopped(tmp_path: Path) -> None:
    out = tmp_path / "ab"
    argv = [sys.executable, str(ROOT / "benchmarks" / "builds_ab.py")]
    argv += ["--build", f"first={ROOT / 'src'}", "--build", f"second={ROOT / 'src'}"]
    argv += ["--rounds", "1", "--out", str(out), "--"]
    argv += ["--scenario", "pairs", "--users", "20", "--rates", "40", "--step-seconds", "1"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=seconds(150),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"first-1", "second-1"}
    for name in ("first-1", "second-1"):
        run = summary["runs"][name]
        assert run["pairs"]["max_sustained"] == 40, run
        report = json.loads((out / name / "bench.json").read_text())
        steps = report["pairs"]["run"]["steps"]
        assert [s["lost"] for s in steps] == [0]
        assert [s["duplicated"] for s in steps] == [0]
        assert report["cluster"]["endpoints"], "the bench was pointed at the started nodes"
        assert set(report["cluster"]["pids"]) == {"n1", "n2", "log"}, report["cluster"]
        assert {"n1", "n2", "log"} <= set(steps[0]["cpu_percent"]), steps[0]
        assert steps[0]["node_us_per_message"] is not None, steps[0]
    assert _processes_mentioning("builds-ab-") == []
