"""``clusterchat bench --quick`` as a smoke test: every figure present, nothing lost.

The bench runs once per module, as a subprocess, against the real cluster it
starts itself (redis-server, two nodes, a dedicated idle node, load-generator
processes). The tests read its ``bench.json``. They never check a speed: only
that each scenario ran and produced its figures, and that no message was lost
or duplicated.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.timing import seconds

pytestmark = pytest.mark.integration

SCENARIOS = ("ceiling", "connect", "pairs", "groups", "offline", "idle")
QUICK_USERS = 50
QUICK_OFFLINE = 100
QUICK_IDLE = 200


#: The bench package of this checkout (benchmarks/clusterchat_bench).
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def bench_env() -> dict[str, str]:
    """Our environment, with this checkout's bench package first on the path."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """Run ``clusterchat bench --quick`` once; yield its exit status, output and out dir."""
    out = tmp_path_factory.mktemp("bench") / "out"
    argv = [sys.executable, "-m", "clusterchat", "bench", "--quick", "--out", str(out)]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=bench_env(),
    )
    try:
        output, _ = process.communicate(timeout=seconds(100))
    except subprocess.TimeoutExpired:
        # SIGTERM lets the bench stop its cluster and workers by pid before it exits.
        process.terminate()
        output, _ = process.communicate(timeout=seconds(30))
        pytest.fail(f"bench --quick did not finish:\n{output.decode(errors='replace')[-3000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output.decode(errors="replace"), out


@pytest.fixture(scope="module")
def report(bench_run: tuple[int, str, Path]) -> dict[str, Any]:
    """The run's bench.json (the run must have succeeded)."""
    status, output, out = bench_run
    assert status == 0, output[-3000:]
    data: dict[str, Any] = json.loads((out / "bench.json").read_text())
    return data


def _steps(report: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    run = report[scenario]["run"]
    return [run["warmup"], *run["steps"]]


def test_every_scenario_ran_without_error(report: dict[str, Any]) -> None:
    """Each of the six scenarios has figures and none is listed as failed."""
    assert report["errors"] == {}
    for name in SCENARIOS:
        assert report[name] is not None, name


def test_files_and_context_are_written(
    bench_run: tuple[int, str, Path], report: dict[str, Any]
) -> None:
    """The plot, the node logs, the command line, versions and machine are recorded."""
    _, _, out = bench_run
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "logs" / "n1.log").exists()
    assert "--quick" in report["argv"]
    assert report["versions"]["clusterchat"]
    assert report["versions"]["redis-server"]
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["memory_bytes"] > 0
    assert report["cluster"]["mode"] == "own"
    assert report["cluster"]["nodes"] == 2
    assert report["pairs"]["cross_node"] is True


def test_ceiling_and_connect_figures(report: dict[str, Any]) -> None:
    """The PUBLISH ceiling is measured both ways and every user registered and logged in."""
    ceiling = report["ceiling"]
    assert ceiling["unpipelined_per_s"] > 0
    assert ceiling["pipelined_per_s"] > 0
    assert ceiling["subscribers"] == 1
    for phase in ("register", "login"):
        figures = report["connect"][phase]
        assert figures["succeeded"] == QUICK_USERS, figures
        assert figures["failed"] == 0
        assert figures["per_second"] > 0


@pytest.mark.parametrize("scenario", ["pairs", "groups"])
def test_stepped_scenarios_have_figures(report: dict[str, Any], scenario: str) -> None:
    """Each step of pairs and groups reports offered, delivered, the latency percentiles
    and the nodes' CPU per message."""
    run = report[scenario]["run"]
    assert run["flows"] > 0
    assert run["steps"], run["stopped_because"]
    node_seconds = 0.0
    for step in _steps(report, scenario):
        assert step["offered_per_s"] > 0
        assert step["delivered"] == step["expected"] > 0
        assert step["delivered_per_s"] > 0
        assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
        # The nodes' CPU per message, from /proc in clock ticks (10 ms): a
        # warm-up of two group messages may take less than one tick, so a step
        # may read 0; the steps together cannot.
        assert step["node_us_per_message"] >= 0, step
        node_seconds += step["node_us_per_message"] * step["messages_sent"] / 1e6
    assert node_seconds > 0


@pytest.mark.parametrize("scenario", ["pairs", "groups"])
def test_stepped_scenarios_lose_and_duplicate_nothing(
    report: dict[str, Any], scenario: str
) -> None:
    """No step of pairs or groups lost, duplicated or refused a message."""
    for step in _steps(report, scenario):
        assert (step["lost"], step["duplicated"], step["errors"]) == (0, 0, 0), step


def test_offline_messages_all_arrive_once_in_order(report: dict[str, Any]) -> None:
    """The offline user gets every stored message exactly once, in order, with a time."""
    offline = report["offline"]
    assert offline["stored"] == offline["received"] == QUICK_OFFLINE
    assert (offline["lost"], offline["duplicated"]) == (0, 0)
    assert offline["in_order"] is True
    assert offline["seconds_to_last"] > 0
    assert report["losses"] == []


def test_idle_connections_and_rss(report: dict[str, Any]) -> None:
    """Every idle connection logs in and the node's RSS per connection is measured."""
    idle = report["idle"]
    assert idle["login"]["succeeded"] == QUICK_IDLE
    assert idle["rss_before_kib"] > 0
    assert idle["rss_after_kib"] > 0
    assert idle["bytes_per_connection"] is not None


def test_no_verdicts_only_figures_and_ratios(
    bench_run: tuple[int, str, Path], report: dict[str, Any]
) -> None:
    """No targets and no met/not-met verdicts; ratios to the same run's ceiling are figures."""
    _, output, _ = bench_run
    assert "targets" not in report
    assert "target" not in output.lower().replace("--target", "")
    assert "sustained" not in output.lower()
    assert report["ratios"]["pairs_max_vs_unpipelined_ceiling"] is not None


def test_quick_says_it_is_a_smoke_run_first_and_last(bench_run: tuple[int, str, Path]) -> None:
    """The first line and the closing lines of --quick's output say it is a smoke run."""
    _, output, _ = bench_run
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("SMOKE RUN (--quick)"), lines[:3]
    tail = "\n".join(lines[-10:])
    assert "SMOKE RUN (--quick)" in tail, tail


def test_cluster_runs_what_up_runs(
    bench_run: tuple[int, str, Path], report: dict[str, Any]
) -> None:
    """Redis has up's pubsub buffer setting; nodes hash by default; raised limits are named."""
    _, output, _ = bench_run
    cluster = report["cluster"]
    redis_argv = cluster["command_lines"]["redis"]
    assert "--client-output-buffer-limit" in redis_argv
    assert "pubsub 256mb 128mb 60" in redis_argv
    hashing = cluster["node_configuration"]["password_hashing"]
    assert hashing["cheap_hashing"] is False
    assert report["options"]["cheap_hashing"] is False
    for name in ("argon2_time_cost", "argon2_memory_kib"):
        assert hashing[name] == hashing["defaults"][name]
    assert not any("ARGON2" in name for name in cluster["node_env"])
    raised = cluster["node_configuration"]["raised_for_load_generation"]
    assert set(raised) >= {"max_rate", "max_connections", "registrations_per_address"}
    for figures in raised.values():
        assert figures["bench"] > figures["default"]
    assert "default password hashing" in output
    assert "raised for load generation: max_rate 200 -> 100,000" in output


def test_idle_figure_names_its_connection_count(
    bench_run: tuple[int, str, Path], report: dict[str, Any]
) -> None:
    """The idle memory figure says how many connections it comes from, and that they are few."""
    _, output, _ = bench_run
    assert f"over {QUICK_IDLE} logged-in connections" in output
    note = f"from {QUICK_IDLE} connections only: too few for a per-connection cost"
    assert note in report["idle"]["note"]
    assert f"idle: {note}" in output


def test_everything_it_started_is_gone(report: dict[str, Any]) -> None:
    """After the run nothing listens on the nodes' or Redis' ports any more."""
    redis = urlsplit(report["cluster"]["redis_url"])
    addresses = [(redis.hostname, redis.port)]
    for endpoint in report["cluster"]["endpoints"]:
        host, _, port = endpoint.rpartition(":")
        addresses.append((host, int(port)))
    for host, port in addresses:
        assert host is not None
        assert port is not None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=seconds(2)).close()
