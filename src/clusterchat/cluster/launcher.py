"""``clusterchat up``: a whole local cluster in the foreground.

Starts, in order, a private ``redis-server`` on a free loopback port, N chat
nodes on free ports (all sharing one database and that Redis), and ``nginx``
balancing TCP connections on the public port across the nodes. Prints a table
of what runs where, then supervises: a child that dies is reported and
restarted (a node on its old port, so nginx finds it again). On SIGINT or
SIGTERM it stops everything it started, by pid, front door first: nginx,
then the nodes (each closes its sessions and flushes what it must store),
then Redis.
"""

import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from clusterchat.cluster.address_file import ClusterAddress, remove_address, write_address
from clusterchat.cluster.children import start_node, start_redis
from clusterchat.cluster.errors import ChildFailed
from clusterchat.cluster.log_writers import log_writer_pids, stop_log_writers
from clusterchat.cluster.nginx import NGINX_PACKAGES, STREAM_MODULE, nginx_argv, render_nginx_conf
from clusterchat.cluster.ports import free_port
from clusterchat.cluster.processes import (
    Child,
    MissingDependency,
    find_executable,
    log_tail,
    spawn,
    stop,
    wait_for_port,
)
from clusterchat.cluster.redis import REDIS_PACKAGE
from clusterchat.cluster.tls import self_signed

__all__ = ["Cluster", "ClusterSpec", "own_command", "run_cluster", "upgrade_database"]

#: Failed restarts of one child in a row after which ``up`` stops the cluster.
_RESTART_TRIES = 3
#: Seconds between two checks that every child still runs.
_SUPERVISE_INTERVAL = 0.5
#: Longest a database upgrade may take (a large old database is rewritten).
_UPGRADE_TIMEOUT = 3600.0


def own_command() -> str:
    """This program as a shell in the current directory runs it again: ``clusterchat``
    when PATH finds this one, else its path (``./scripts/run`` runs
    ``.venv/bin/clusterchat``, whose directory is not on the user's PATH), else
    ``python -m clusterchat`` with this interpreter."""
    script = Path(sys.argv[0])
    program = (
        script if script.name == "clusterchat" else Path(sys.executable).parent / "clusterchat"
    )
    if not program.is_file():
        return f"{shlex.quote(sys.executable)} -m clusterchat"
    found = shutil.which("clusterchat")
    if found is not None and Path(found).resolve() == program.resolve():
        return "clusterchat"
    absolute = program.absolute()
    try:
        return shlex.quote(str(absolute.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(absolute))


@dataclass(frozen=True)
class ClusterSpec:
    """What ``clusterchat up`` starts.

    Attributes:
        nodes: How many chat nodes.
        port: The public TCP port (nginx).
        dir: Working directory: database, logs, configs.
        db: Database URL shared by all nodes (default: SQLite in ``dir``).
        host: Loopback address everything binds to.
        redis_persistence: Keep Redis snapshots (off: Redis is only a bus).
        workers: Processes per node (``clusterchat node --workers``; each a
            full node of the cluster on the node's port).
        node_args: Extra ``clusterchat node`` arguments for every node.
        ready_timeout: Seconds each child may take to become ready.
        tls: nginx speaks TLS on the public port, with a self-signed
            certificate made in ``dir/tls`` (cluster/tls.py).
    """

    nodes: int = 2
    port: int = 8000
    dir: Path = Path("clusterchat-run")
    db: str | None = None
    host: str = "127.0.0.1"
    redis_persistence: bool = False
    workers: int = 1
    node_args: Sequence[str] = ()
    ready_timeout: float = 30.0
    tls: bool = False


@dataclass
class _Slot:
    """One supervised child and how to start it again."""

    name: str
    port: int
    start: Callable[["_Slot"], Child]
    child: Child | None = None
    #: Restarts in a row that failed (the child did not become ready).
    failures: int = 0


@dataclass
class Cluster:
    """Starts, supervises and stops the children of one local cluster."""

    spec: ClusterSpec
    redis: _Slot | None = None
    nodes: list[_Slot] = field(default_factory=list)
    nginx: _Slot | None = None
    #: (certificate, key) of the public port with ``spec.tls``.
    certificate: tuple[Path, Path] | None = None

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://{self.spec.host}:{self.redis.port}/0"

    @property
    def db_url(self) -> str:
        return self.spec.db or f"sqlite:///{self.spec.dir.resolve() / 'clusterchat.db'}"

    def check_dependencies(self) -> None:
        """Raises ``MissingDependency`` naming the Debian package to install."""
        find_executable("redis-server", REDIS_PACKAGE)
        find_executable("nginx", NGINX_PACKAGES)
        if self.spec.tls:
            find_executable("openssl", "openssl")
        if not STREAM_MODULE.exists():
            raise MissingDependency(
                f"nginx stream module not found: apt-get install {NGINX_PACKAGES}"
            )

    def start(self) -> None:
        """Start Redis, the nodes and nginx, each ready before the next."""
        self.check_dependencies()
        spec = self.spec
        spec.dir.mkdir(parents=True, exist_ok=True)
        if spec.tls:
            self.certificate = self_signed(spec.dir.resolve() / "tls", spec.host)
        for line in upgrade_database(self.db_url):
            print(f"clusterchat up: {line}", file=sys.stderr, flush=True)
        self.redis = _Slot("redis", free_port(spec.host), self._start_redis)
        self._launch(self.redis)
        for index in range(1, spec.nodes + 1):
            slot = _Slot(f"node{index}", free_port(spec.host), self._start_node)
            self.nodes.append(slot)
            self._launch(slot)
        self.nginx = _Slot("nginx", spec.port, self._start_nginx)
        self._launch(self.nginx)

    @staticmethod
    def _launch(slot: _Slot) -> None:
        slot.child = slot.start(slot)

    def _start_redis(self, slot: _Slot) -> Child:
        return start_redis(
            slot.port,
            self.spec.dir / "redis",
            log_path=self.spec.dir / "redis.log",
            timeout=self.spec.ready_timeout,
            host=self.spec.host,
            persistence=self.spec.redis_persistence,
        )

    def _start_node(self, slot: _Slot) -> Child:
        return start_node(
            slot.name,
            slot.port,
            db_url=self.db_url,
            redis_url=self.redis_url,
            log_path=self.spec.dir / f"{slot.name}.log",
            timeout=self.spec.ready_timeout,
            host=self.spec.host,
            workers=self.spec.workers,
            # nginx names each client in a PROXY header (limits per address).
            extra=["--proxy-protocol", *self.spec.node_args],
        )

    def _start_nginx(self, slot: _Slot) -> Child:
        prefix = (self.spec.dir / "nginx").resolve()
        prefix.mkdir(exist_ok=True)
        conf = render_nginx_conf(
            prefix,
            listen=(self.spec.host, self.spec.port),
            upstreams=[(self.spec.host, node.port) for node in self.nodes],
            proxy_protocol=True,
            tls=self.certificate,
        )
        (prefix / "nginx.conf").write_text(conf)
        # nginx writes its own errors to <prefix>/error.log (-e): read that one on failure.
        child = spawn("nginx", nginx_argv(prefix), log_path=prefix / "error.log")
        wait_for_port(self.spec.host, slot.port, self.spec.ready_timeout, child)
        return child

    def slots(self) -> list[_Slot]:
        return [s for s in (self.redis, *self.nodes, self.nginx) if s is not None]

    def table(self) -> str:
        """What runs where, for people."""
        rows = [("process", "pid", "address", "log")]
        for slot in self.slots():
            pid = str(slot.child.pid) if slot.child else "-"
            log = str(slot.child.log_path) if slot.child else "-"
            rows.append((slot.name, pid, f"{self.spec.host}:{slot.port}", log))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.append(f"chat on {self.spec.host}:{self.spec.port}   database {self.db_url}")
        if self.certificate is not None:
            lines.append(f"TLS, self-signed certificate {self.certificate[0]}")
        # Both find this cluster through its address file (cluster/address_file.py).
        where = "" if self.spec.dir == ClusterSpec.dir else f" --dir {self.spec.dir}"
        program = own_command()
        lines.append(f"try:  {program} client{where}    {program} status{where}")
        return "\n".join(lines)

    def supervise_once(self) -> list[str]:
        """Restart every child that died; return what happened, for the log."""
        events = []
        for slot in self.slots():
            child = slot.child
            if child is None or child.alive():
                continue
            events.append(
                f"{slot.name} (pid {child.pid}) exited with {child.returncode}; restarting\n"
                + log_tail(child, 10)
            )
            try:
                slot.child = slot.start(slot)
            except Exception as exc:  # reported, retried on the next round
                slot.failures += 1
                events.append(f"restarting {slot.name} failed: {exc}")
                if slot.failures >= _RESTART_TRIES:
                    raise ChildFailed(
                        f"{slot.name} could not be started again"
                        f" ({_RESTART_TRIES} tries in a row): {exc}"
                    ) from exc
            else:
                slot.failures = 0
        return events

    def stop(self) -> None:
        """Stop every child by pid: nginx, then the nodes and the SQLite log writer
        they started (not a child: found by its command line), then Redis."""
        url = self.db_url
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        writers = log_writer_pids(path) if path else []
        for slot in [s for s in (self.nginx, *self.nodes) if s is not None]:
            if slot.child is not None:
                stop(slot.child, timeout=15.0)
        stop_log_writers(writers, timeout=15.0)
        if self.redis is not None and self.redis.child is not None:
            stop(self.redis.child, timeout=15.0)


def upgrade_database(db_url: str) -> list[str]:
    """Bring the database to the newest schema, before any node starts on it.

    Runs the command an operator runs (``clusterchat db upgrade``).

    Returns:
        What it reports: the migrations' warnings, then what was done.

    Raises:
        RuntimeError: The upgrade failed; the message is its reason.
    """
    argv = [sys.executable, "-m", "clusterchat", "db", "upgrade", "--db", db_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_UPGRADE_TIMEOUT)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"the database upgrade failed: {lines[-1]}")
    warnings = [line.removeprefix("clusterchat db: ") for line in done.stderr.splitlines()]
    return [*warnings, *(f"database {line}" for line in done.stdout.splitlines())]


def _lock_run_dir(directory: Path) -> tuple[int | None, str]:
    """Take ``directory``'s lock (``.lock``, flock): (its descriptor, "") or (None, the holder).

    The lock lives as long as this process: a crashed ``up`` leaves none.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def run_cluster(spec: ClusterSpec) -> int:
    """Run a cluster until SIGINT/SIGTERM; return the exit status.

    Before anything starts, the run directory is locked (a second ``up`` on it
    says which process has it) and the public port is checked (a taken one is
    named, with the flag that changes it).
    """
    lock, holder = _lock_run_dir(spec.dir)
    if lock is None:
        print(
            f"clusterchat up: {spec.dir} is in use by another clusterchat up (pid {holder}):"
            " stop it, or give another directory with --dir",
            file=sys.stderr,
        )
        return 1
    try:
        if _port_taken(spec.host, spec.port):
            print(
                f"clusterchat up: port {spec.port} on {spec.host} is taken:"
                " choose another with --port",
                file=sys.stderr,
            )
            return 1
        return _run_locked(spec)
    finally:
        os.close(lock)


def _run_locked(spec: ClusterSpec) -> int:
    cluster = Cluster(spec)
    # A plain flag, polled: a handler that took a lock (threading.Event.set)
    # deadlocked when a second signal came while the first one's set() held it.
    stopping: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start()
        except MissingDependency as exc:
            print(f"clusterchat up: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"clusterchat up: could not start the cluster: {exc}", file=sys.stderr)
            return 1
        ca = None if cluster.certificate is None else str(cluster.certificate[0])
        write_address(spec.dir, ClusterAddress(spec.host, spec.port, cluster.redis_url, ca))
        print(cluster.table(), file=sys.stderr, flush=True)
        print("cluster ready (Ctrl-C stops it)", file=sys.stderr, flush=True)
        while not stopping:
            time.sleep(_SUPERVISE_INTERVAL)
            if stopping:
                break
            try:
                events = cluster.supervise_once()
            except ChildFailed as exc:
                print(f"clusterchat up: {exc}; stopping the cluster", file=sys.stderr, flush=True)
                return 1
            for event in events:
                print(f"clusterchat up: {event}", file=sys.stderr, flush=True)
        print("clusterchat up: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        remove_address(spec.dir)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
