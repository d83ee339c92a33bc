"""`clusterchat up`: a whole cluster from one command, nothing left behind (cluster issue)."""

import contextlib
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.ports import free_port
from clusterchat_bench.cluster import BenchCluster
from clusterchat_bench.commands import Endpoint
from tests.support.classic import ClassicClient
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

#: The run directory, named as ``up``'s default (which nginx's command line names).
RUN_DIR = "clusterchat-run"
_FAST_HASHING = {"CLUSTERCHAT_ARGON2_TIME_COST": "1", "CLUSTERCHAT_ARGON2_MEMORY_KIB": "1024"}


def _pids_from_table(log: str) -> dict[str, int]:
    """The ``process pid address log`` rows that ``up`` prints."""
    pids = {}
    for line in log.splitlines():
        cells = line.split()
        if (
            len(cells) >= 2
            and cells[1].isdigit()
            and cells[0] in {"redis", "nginx"} | {f"node{i}" for i in range(1, 10)}
        ):
            pids[cells[0]] = int(cells[1])
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose once reaped by its parent.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" in status.read_text()


def _start_up(tmp_path: Path, *args: str) -> tuple[int, Path, processes.Child]:
    """Start `clusterchat up` on a free port in ``tmp_path`` (its children die with it)."""
    port = free_port()
    log_path = tmp_path / "up.log"
    argv = [sys.executable, "-m", "clusterchat", "up", *args, "--port", str(port)]
    up = processes.spawn(
        "up",
        [*argv, "--dir", str(tmp_path / RUN_DIR)],
        log_path=log_path,
        env={**os.environ, **_FAST_HASHING},
    )
    return port, log_path, up


def _client_and_status_reach_it(
    client: list[str], status: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> None:
    """``client`` registers a user through the running cluster; ``status`` lists its node1."""
    registered = subprocess.run(
        client,
        input="2\nwendy\npw-w\n3\n",
        capture_output=True,
        text=True,
        timeout=seconds(30),
        cwd=cwd,
        env=env,
    )
    assert registered.returncode == 0, (client, registered.stderr)
    assert "wendy registered, your userid is" in registered.stdout
    listed = subprocess.run(
        status, capture_output=True, text=True, timeout=seconds(30), cwd=cwd, env=env
    )
    assert listed.returncode == 0, (status, listed.stderr)
    assert "node1" in listed.stdout


def test_up_serves_chat_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """`clusterchat up` runs redis, two nodes and nginx; chat works; SIGINT stops every pid."""
    port, log_path, up = _start_up(tmp_path)
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        pids = _pids_from_table(log_path.read_text())
        assert set(pids) == {"redis", "node1", "node2", "nginx"}
        # `bench --target` at nginx's port finds the nodes behind it and their log writer.
        found = BenchCluster.target([Endpoint("127.0.0.1", port)], None).processes()
        assert found.keys() == {"n1", "n2", "log"}, found
        assert [found["n1"], found["n2"]] == [[pids["node1"]], [pids["node2"]]]

        register = ClassicClient("127.0.0.1", port)
        ids = [
            register.request({"msgid": 4, "name": name, "password": "pw"})["id"]
            for name in ("ann", "bob")
        ]
        register.close()
        ann = ClassicClient("127.0.0.1", port)
        bob = ClassicClient("127.0.0.1", port)
        assert ann.request({"msgid": 1, "id": ids[0], "password": "pw"})["errno"] == 0
        assert bob.request({"msgid": 1, "id": ids[1], "password": "pw"})["errno"] == 0
        ann.send({"msgid": 6, "toid": ids[1], "msg": "through nginx"})
        assert bob.receive()["msg"] == "through nginx"
        ann.close()
        bob.close()

        # Two signals back to back (an impatient Ctrl-C): the second one used to
        # deadlock in the handler while the first one's Event.set held its lock.
        os.kill(up.pid, signal.SIGINT)
        os.kill(up.pid, signal.SIGINT)
        assert processes.stop(up, timeout=seconds(30), sig=signal.SIGINT) == 0
        for name, pid in pids.items():
            assert _gone(pid), f"{name} (pid {pid}) survived clusterchat up"
    finally:
        processes.kill(up)


def test_up_restarts_a_node_that_dies(tmp_path: Path) -> None:
    """A node killed under `up` is reported and restarted on its port."""
    port, log_path, up = _start_up(tmp_path, "--nodes", "1")
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        node = _pids_from_table(log_path.read_text())["node1"]
        os.kill(node, signal.SIGKILL)
        processes.wait_for_log(up, "node1 (pid", seconds(30))
        client = ClassicClient("127.0.0.1", port)
        deadline_answer = client.request({"msgid": 4, "name": "after", "password": "pw"})
        assert deadline_answer["errno"] == 0
        client.close()
    finally:
        processes.stop(up, timeout=seconds(30), sig=signal.SIGINT)


def test_up_with_tls_serves_chat_through_nginx(tmp_path: Path) -> None:
    """`up --tls`: nginx speaks TLS with a generated certificate; chat works end to end."""
    port, log_path, up = _start_up(tmp_path, "--tls")
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        cert = (tmp_path / RUN_DIR / "tls" / "cert.pem").resolve()
        assert f"TLS, self-signed certificate {cert}" in log_path.read_text()
        context = ssl.create_default_context(cafile=str(cert))

        def connect() -> ClassicClient:
            raw = socket.create_connection(("127.0.0.1", port), timeout=seconds(10))
            return ClassicClient.over(context.wrap_socket(raw, server_hostname="127.0.0.1"))

        register = connect()
        ids = [
            register.request({"msgid": 4, "name": name, "password": "pw"})["id"]
            for name in ("tess", "uma")
        ]
        register.close()
        tess, uma = connect(), connect()
        assert tess.request({"msgid": 1, "id": ids[0], "password": "pw"})["errno"] == 0
        assert uma.request({"msgid": 1, "id": ids[1], "password": "pw"})["errno"] == 0
        tess.send({"msgid": 6, "toid": ids[1], "msg": "over TLS"})
        assert uma.receive()["msg"] == "over TLS"
        tess.close()
        uma.close()
        # Without TLS the public port gives nothing.
        plain = socket.create_connection(("127.0.0.1", port), timeout=seconds(10))
        plain.sendall(b'{"msgid":120,"ref":1}\0')
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            assert b"msgid" not in plain.recv(4096)
        plain.close()
    finally:
        processes.stop(up, timeout=seconds(30), sig=signal.SIGINT)


def test_a_second_up_on_the_same_directory_says_so_and_starts_nothing(tmp_path: Path) -> None:
    """On main a second `up` printed "cluster ready", then restarted nginx every 3 s forever."""
    _port, _log, up = _start_up(tmp_path, "--nodes", "1")
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        run_dir = str(tmp_path / RUN_DIR)
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "clusterchat",
                "up",
                "--port",
                str(free_port()),
                "--dir",
                run_dir,
            ],
            capture_output=True,
            text=True,
            timeout=seconds(30),
            env={**os.environ, **_FAST_HASHING},
        )
        assert second.returncode == 1
        assert f"{tmp_path / RUN_DIR} is in use by another clusterchat up (pid {up.pid})" in (
            second.stderr
        )
        assert "cluster ready" not in second.stderr
    finally:
        processes.stop(up, timeout=seconds(30), sig=signal.SIGINT)


def test_up_on_a_taken_port_fails_fast_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_dir = str(tmp_path / RUN_DIR)
        started = subprocess.run(
            [sys.executable, "-m", "clusterchat", "up", "--port", str(port), "--dir", run_dir],
            capture_output=True,
            text=True,
            timeout=seconds(30),
            env={**os.environ, **_FAST_HASHING},
        )
    assert started.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken: choose another with --port" in started.stderr
    assert not (tmp_path / RUN_DIR / "redis.log").exists()  # nothing was started


def test_status_and_client_find_a_running_up_with_no_address(tmp_path: Path) -> None:
    """On main `status` demanded --redis and `client` tried port 6000, not up's 8000."""
    _port, log_path, up = _start_up(tmp_path, "--nodes", "1", "--tls")
    run_dir = str(tmp_path / RUN_DIR)
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        assert f" client --dir {run_dir}    " in log_path.read_text()  # the "try:" line
        command = [sys.executable, "-m", "clusterchat"]
        _client_and_status_reach_it(
            [*command, "client", "--dir", run_dir], [*command, "status", "--dir", run_dir]
        )
    finally:
        processes.stop(up, timeout=seconds(30), sig=signal.SIGINT)
    gone = subprocess.run(
        [sys.executable, "-m", "clusterchat", "status", "--dir", run_dir],
        capture_output=True,
        text=True,
        timeout=seconds(30),
    )
    assert gone.returncode == 2
    assert f"no clusterchat up is running in {run_dir}" in gone.stderr


def test_a_child_that_cannot_start_again_stops_the_cluster_with_the_reason(
    tmp_path: Path,
) -> None:
    """On main `up` restarted a child that could not start every round, forever."""
    _port, log_path, up = _start_up(tmp_path, "--nodes", "1")
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        node = _pids_from_table(log_path.read_text())["node1"]
        database = tmp_path / RUN_DIR / "clusterchat.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        database.mkdir()  # the running node keeps its open file; a new one cannot open this
        os.kill(node, signal.SIGKILL)
        assert up.popen.wait(timeout=seconds(60)) == 1
        text = log_path.read_text()
        assert "node1 could not be started again (3 tries in a row)" in text
        assert "stopping the cluster" in text
    finally:
        processes.kill(up)


def test_the_commands_up_suggests_work_as_printed_without_the_venv_on_path(
    tmp_path: Path,
) -> None:
    """`./scripts/run` starts `.venv/bin/clusterchat up` from a shell whose PATH
    does not have the venv: `up` said `try:  clusterchat client`, which that
    shell cannot find. Both suggested commands are run exactly as printed, from
    the directory `up` runs in, with PATH as such a shell has it."""
    program = Path(sys.executable).parent / "clusterchat"
    path = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if Path(d) != program.parent
    )
    env = {**os.environ, **_FAST_HASHING, "PATH": path}
    log_path = tmp_path / "up.log"
    up = processes.spawn(
        "up",
        [str(program), "up", "--nodes", "1", "--port", str(free_port())],
        log_path=log_path,
        env=env,
        cwd=tmp_path,
    )
    try:
        processes.wait_for_log(up, "cluster ready", seconds(60))
        match = re.search(r"^try:  (.+?)    (.+)$", log_path.read_text(), re.MULTILINE)
        assert match is not None, log_path.read_text()
        client_line, status_line = match.groups()
        _client_and_status_reach_it(
            shlex.split(client_line), shlex.split(status_line), cwd=tmp_path, env=env
        )
    finally:
        processes.stop(up, timeout=seconds(30), sig=signal.SIGINT)
