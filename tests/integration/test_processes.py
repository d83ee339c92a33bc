"""clusterchat.cluster.processes with real child processes (finding programs: tests/unit)."""

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clusterchat.cluster import processes
from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.ports import free_port
from tests.support.processes import assert_stopped, pid_gone, process_state, wait_until
from tests.support.timing import seconds

pytestmark = pytest.mark.integration

Spawn = Callable[[str], processes.Child]

LISTEN = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(60)
"""


@pytest.fixture
def python_child(tmp_path: Path) -> Iterator[Callable[..., processes.Child]]:
    """Spawn ``python -c CODE ARGS...`` children; kill and check all at teardown."""
    children: list[processes.Child] = []

    def start(code: str, *args: str, log_name: str = "child.log") -> processes.Child:
        child = processes.spawn(
            f"py{len(children)}", [sys.executable, "-c", code, *args], log_path=tmp_path / log_name
        )
        children.append(child)
        return child

    yield start
    for child in children:
        processes.kill(child)
        assert_stopped(child)


def test_spawn_appends_stdout_and_stderr_to_log(
    tmp_path: Path, python_child: Callable[..., processes.Child]
) -> None:
    """Both output streams land in the log, after what the file already held."""
    (tmp_path / "child.log").write_text("earlier run\n")
    child = python_child("import sys; print('to out'); print('to err', file=sys.stderr)")
    assert child.popen.wait(timeout=seconds(10)) == 0
    text = (tmp_path / "child.log").read_text()
    assert text.startswith("earlier run\n")
    assert "to out" in text
    assert "to err" in text


def test_spawn_gives_child_own_session_and_empty_stdin(
    tmp_path: Path, python_child: Callable[..., processes.Child]
) -> None:
    """The child leads a new session (no terminal signals) and reads EOF from stdin."""
    child = python_child("import sys; print('stdin:', repr(sys.stdin.read()))")
    assert os.getsid(child.pid) == child.pid
    assert os.getpgid(child.pid) == child.pid
    assert child.popen.wait(timeout=seconds(10)) == 0
    assert "stdin: ''" in (tmp_path / "child.log").read_text()


def test_spawn_passes_env_and_cwd(tmp_path: Path) -> None:
    """The child gets exactly the given environment and working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    child = processes.spawn(
        "env",
        [sys.executable, "-c", "import os; print(os.environ['MARK'], os.getcwd())"],
        log_path=tmp_path / "env.log",
        env={"MARK": "m-42"},
        cwd=workdir,
    )
    try:
        assert child.popen.wait(timeout=seconds(10)) == 0
    finally:
        processes.kill(child)
    assert (tmp_path / "env.log").read_text().strip() == f"m-42 {workdir}"


def test_spawn_of_missing_program_raises(tmp_path: Path) -> None:
    """A program that does not exist fails at spawn time, not later."""
    with pytest.raises(FileNotFoundError):
        processes.spawn("nope", [str(tmp_path / "no-such-program")], log_path=tmp_path / "x.log")


def test_wait_for_port_returns_once_child_listens(
    python_child: Callable[..., processes.Child],
) -> None:
    """wait_for_port returns as soon as the child accepts connections."""
    port = free_port()
    child = python_child(LISTEN, str(port))
    processes.wait_for_port("127.0.0.1", port, seconds(10), child)
    with socket.create_connection(("127.0.0.1", port), timeout=seconds(5)):
        pass
    assert child.alive()


def test_wait_for_port_fails_with_log_tail_when_child_exits(
    python_child: Callable[..., processes.Child],
) -> None:
    """A child that dies before listening fails the wait with its exit code and output."""
    child = python_child("import sys; print('bind failed: boom'); sys.exit(3)")
    with pytest.raises(ChildFailed, match=r"exited with code 3(.|\n)*bind failed: boom"):
        processes.wait_for_port("127.0.0.1", free_port(), seconds(30), child)


def test_wait_for_port_times_out(python_child: Callable[..., processes.Child]) -> None:
    """With nothing listening, the wait ends in ChildFailed at the timeout."""
    child = python_child("import time; time.sleep(60)")
    with pytest.raises(ChildFailed, match="timed out"):
        processes.wait_for_port("127.0.0.1", free_port(), seconds(0.3), child)
    with pytest.raises(ChildFailed, match="timed out"):
        processes.wait_for_port("127.0.0.1", free_port(), seconds(0.3))


def test_wait_for_log_sees_text(python_child: Callable[..., processes.Child]) -> None:
    """wait_for_log returns once the child has written the text."""
    child = python_child("import time; print('server ready', flush=True); time.sleep(60)")
    processes.wait_for_log(child, "server ready", seconds(10))


def test_wait_for_log_counts_text_written_just_before_exit(
    python_child: Callable[..., processes.Child],
) -> None:
    """Text the child wrote before exiting is found even though the child is gone."""
    child = python_child("print('done and ready')")
    assert child.popen.wait(timeout=seconds(10)) == 0
    processes.wait_for_log(child, "ready", seconds(1))


def test_wait_for_log_ignores_earlier_runs(
    tmp_path: Path, python_child: Callable[..., processes.Child]
) -> None:
    """Text from a previous process in the same log does not count as ready."""
    (tmp_path / "child.log").write_text("server ready\n")
    child = python_child("import time; time.sleep(60)")
    with pytest.raises(ChildFailed, match="timed out"):
        processes.wait_for_log(child, "server ready", seconds(0.3))


def test_wait_for_log_fails_when_child_exits(
    python_child: Callable[..., processes.Child],
) -> None:
    """A child that exits without the text fails the wait, showing its output."""
    child = python_child("print('config error'); raise SystemExit(2)")
    with pytest.raises(ChildFailed, match=r"exited with code 2(.|\n)*config error"):
        processes.wait_for_log(child, "ready", seconds(30))


def test_stop_terminates_reaps_and_is_idempotent(
    python_child: Callable[..., processes.Child],
) -> None:
    """stop() sends SIGTERM, reaps, and returns the same status when repeated."""
    child = python_child("import time; print('up', flush=True); time.sleep(60)")
    processes.wait_for_log(child, "up", seconds(10))
    assert processes.stop(child) == -signal.SIGTERM
    assert processes.stop(child) == -signal.SIGTERM
    assert not child.alive()
    assert child.returncode == -signal.SIGTERM
    assert_stopped(child)


def test_stop_sends_the_given_signal(python_child: Callable[..., processes.Child]) -> None:
    """stop(sig=...) delivers that signal (SIGQUIT is nginx's graceful stop)."""
    child = python_child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGQUIT, lambda *_: sys.exit(7))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)"
    )
    processes.wait_for_log(child, "up", seconds(10))
    assert processes.stop(child, sig=signal.SIGQUIT) == 7


def test_stop_kills_child_that_ignores_sigterm(
    python_child: Callable[..., processes.Child],
) -> None:
    """A child that ignores SIGTERM is SIGKILLed after the timeout."""
    child = python_child(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\n"
        "time.sleep(60)"
    )
    processes.wait_for_log(child, "ignoring", seconds(10))
    assert processes.stop(child, timeout=seconds(0.3)) == -signal.SIGKILL
    assert_stopped(child)


def test_pause_and_resume_freeze_and_continue_the_child(
    python_child: Callable[..., processes.Child],
) -> None:
    """pause() stops the process (state T); resume() lets it run again."""
    child = python_child("import time; print('up', flush=True); time.sleep(60)")
    processes.wait_for_log(child, "up", seconds(10))
    processes.pause(child)
    assert wait_until(lambda: process_state(child.pid) == "T", seconds(5))
    assert child.alive()
    processes.resume(child)
    assert wait_until(lambda: process_state(child.pid) in ("S", "R"), seconds(5))


def test_stop_ends_a_paused_child(python_child: Callable[..., processes.Child]) -> None:
    """A paused child still dies of SIGTERM (stop continues it), not only of SIGKILL."""
    child = python_child("import time; print('up', flush=True); time.sleep(60)")
    processes.wait_for_log(child, "up", seconds(10))
    processes.pause(child)
    assert wait_until(lambda: process_state(child.pid) == "T", seconds(5))
    assert processes.stop(child, timeout=seconds(10)) == -signal.SIGTERM
    assert_stopped(child)


def test_kill_takes_down_the_whole_process_group(
    tmp_path: Path, python_child: Callable[..., processes.Child]
) -> None:
    """kill() SIGKILLs the child and the helpers it started (like nginx workers)."""
    child = python_child(
        "import subprocess, sys, time\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('helper', helper.pid, flush=True)\n"
        "time.sleep(60)"
    )
    processes.wait_for_log(child, "helper ", seconds(10))
    line = next(
        x for x in (tmp_path / "child.log").read_text().splitlines() if x.startswith("helper ")
    )
    helper = int(line.split()[1])
    assert not pid_gone(helper)
    assert processes.kill(child) == -signal.SIGKILL
    assert wait_until(lambda: pid_gone(helper), seconds(5))
    assert_stopped(child)
