"""Two (or more) builds of clusterchat under the same load generator, alternating.

Run with ``.venv/bin/python benchmarks/builds_ab.py --build NAME=SRC ...
[--rounds 2] --out DIR -- <clusterchat bench options>``, for example::

    git worktree add /tmp/nolog 17c20a3
    .venv/bin/python benchmarks/builds_ab.py --build nolog=/tmp/nolog/src \\
        --build log=src --rounds 3 --out /tmp/ab -- --scenario ceiling,pairs \\
        --users 1000 --rates 5000,7500,10000,12500,15000,17500,20000

For each round and each build in turn it starts a private redis-server
(this checkout's ``redis_argv``: what ``clusterchat up`` gives users), a
fresh SQLite file (upgraded with the build's own ``clusterchat db upgrade``
where the build has one; an older build creates its tables itself) and
two nodes running the build's ``src`` (``python -m clusterchat node``, the
flags every build has, and ``--workers 1`` where the build has it: one
process per node), then runs **this** checkout's ``clusterchat
bench --target`` against them and stops everything it started, by pid
(the log writer of a build that has one included). The bench's own cluster
(``clusterchat bench`` without ``--target``) can only start the current
build; this is how an older build is measured with the same load generator
as the newer one, so the load generator's own cost is not part of the
difference. The nodes get the limits the bench raises for load generation
and cheap password hashing through ``CLUSTERCHAT_*`` variables (a build
that lacks a setting ignores its variable).

Each run's ``bench.json`` is ``OUT/<name>-<round>/bench.json``; a summary of
the pairs and groups steps (max sustained rate, p99, and the CPU of the
build's nodes and log writer per message, which the bench measures from
/proc: it finds the processes behind the addresses it is given) is printed
at the end and written to ``OUT/summary.json``. No test asserts on any figure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clusterchat.cluster.log_writers import log_writer_pids, stop_log_writers
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import Child, spawn, stop, wait_for_port
from clusterchat.cluster.redis import redis_argv
from clusterchat.settings import ENV_PREFIX
from clusterchat_bench.cluster import CHEAP_HASHING, RAISED_FOR_LOAD

__all__ = ["main"]

HOST = "127.0.0.1"
_READY = 30.0
_STOP = 15.0


def _environment(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONPATH"] = str(src)
    for name, value in {**RAISED_FOR_LOAD, **CHEAP_HASHING}.items():
        env[ENV_PREFIX + name.upper()] = str(value)
    return env


def _node_flags(env: dict[str, str]) -> list[str]:
    """``--workers 1`` where the build's node has the flag (its default is one
    process per core): one process per node in every build, as the bench runs them."""
    help_text = subprocess.run(
        [sys.executable, "-m", "clusterchat", "node", "--help"],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return ["--workers", "1"] if "--workers" in help_text else []


def _upgrade(src: Path, db_url: str, env: dict[str, str], log: Path) -> None:
    """``clusterchat db upgrade`` of the build, where it has the command."""
    has_db = subprocess.run(
        [sys.executable, "-m", "clusterchat", "db", "--help"],
        env=env,
        capture_output=True,
        check=False,
    )
    if has_db.returncode != 0:
        return  # an older build: its nodes create their tables
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "clusterchat", "db", "upgrade", "--db", db_url],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )


def run_build(name: str, src: Path, out: Path, bench_args: list[str]) -> Path:
    """Start a cluster of ``src``, bench it into ``out``, stop it; the bench.json path."""
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = _environment(src)
    with tempfile.TemporaryDirectory(prefix=f"builds-ab-{name}-") as tmp:
        work = Path(tmp)
        db_path = work / "chat.db"
        db_url = f"sqlite:///{db_path}"
        children: list[Child] = []
        try:
            redis_port = free_port(HOST)
            redis = spawn("redis", redis_argv(redis_port, work), log_path=logs / "redis.log")
            children.append(redis)
            wait_for_port(HOST, redis_port, _READY, redis)
            redis_url = f"redis://{HOST}:{redis_port}/0"
            _upgrade(src, db_url, env, logs / "db.log")
            flags = _node_flags(env)
            endpoints = []
            for index in (1, 2):
                port = free_port(HOST)
                # Not this checkout's node_argv: that is the command line of
                # this build (--workers always), which an older node may refuse.
                argv = [sys.executable, "-m", "clusterchat", "node", "--host", HOST]
                argv += ["--port", str(port), "--db", db_url, "--redis", redis_url]
                argv += ["--node-id", f"n{index}", *flags]
                node = spawn(f"n{index}", argv, log_path=logs / f"n{index}.log", env=env)
                children.append(node)
                wait_for_port(HOST, port, _READY, node)
                endpoints.append(f"{HOST}:{port}")
            bench = [sys.executable, "-m", "clusterchat_bench", *bench_args]
            bench += ["--target", ",".join(endpoints), "--redis", redis_url, "--out", str(out)]
            print(f"[{name}] {' '.join(bench)}", flush=True)
            subprocess.run(bench, check=False)
        finally:
            for child in reversed(children):
                stop(child, _STOP)
            stop_log_writers(log_writer_pids(db_path), _STOP)
    return out / "bench.json"


def _summary(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    found: dict[str, object] = {"ceiling": (data.get("ceiling") or {}).get("unpipelined_per_s")}
    for scenario in ("pairs", "groups"):
        run = (data.get(scenario) or {}).get("run") or {}
        steps = run.get("steps") or []
        best = run.get("max_sustainable_per_s")  # the bench's own verdict
        there = [s["p99_ms"] for s in steps if s["offered_per_s"] == best]
        found[scenario] = {
            "max_sustained": best or 0,
            "p99_ms_there": there[0] if there else None,
            "p99_ms": {str(int(s["offered_per_s"])): s["p99_ms"] for s in steps},
            # CPU of the nodes and their log writer per message sent (the bench
            # finds them from the addresses it is given: its listeners module).
            "nodes_log_us_per_message": {
                str(int(s["offered_per_s"])): s.get("node_us_per_message") for s in steps
            },
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", required=True, help="NAME=SRC directory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench options")
    args = parser.parse_args()
    builds = []
    for spec in args.build:
        name, _, src = spec.partition("=")
        builds.append((name, Path(src).resolve()))
    bench_args = [a for a in args.bench_args if a != "--"]
    runs: dict[str, object] = {}
    for round_no in range(1, args.rounds + 1):
        for name, src in builds:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            path = run_build(name, src, args.out / f"{name}-{round_no}", bench_args)
            runs[f"{name}-{round_no}"] = {"started": started, "src": str(src), **_summary(path)}
            print(json.dumps({f"{name}-{round_no}": runs[f"{name}-{round_no}"]}), flush=True)
    summary = {"bench_args": bench_args, "runs": runs}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
