"""``clusterchat_bench.listeners``: a target's node processes found from its port in a /proc tree.

The tree is a directory made here with the files the module reads (no
process is started): ``net/tcp``, ``net/tcp6``, and per process ``cmdline``
and ``fd/`` links to ``socket:[inode]``.
"""

from pathlib import Path

from clusterchat_bench.listeners import (
    database_of,
    listening_pids,
    node_pids,
    nodes_behind,
    upstreams,
)

_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt  uid inode\n"


def _socket(sl: int, port: int, state: str, inode: int, v6: bool = False) -> str:
    address = "00000000000000000000000001000000" if v6 else "0100007F"
    return (
        f"{sl:4d}: {address}:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000"
        f" 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def _process(proc: Path, pid: int, argv: list[str], inodes: list[int]) -> None:
    (proc / str(pid) / "fd").mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / str(pid) / "fd" / "0").symlink_to("/dev/null")
    for number, inode in enumerate(inodes, start=3):
        (proc / str(pid) / "fd" / str(number)).symlink_to(f"socket:[{inode}]")


def _tree(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(
        _HEADER
        + _socket(0, 8000, "0A", 111)  # a node listening on 8000
        + _socket(1, 8000, "01", 112)  # a client connected to 8000: not a listener
        + _socket(2, 9000, "0A", 222)  # nginx on 9000
    )
    (proc / "net" / "tcp6").write_text(_HEADER + _socket(0, 8000, "0A", 333, v6=True))
    node = ["python", "-m", "clusterchat", "node", "--port", "8000", "--db", "sqlite:////x/chat.db"]
    _process(proc, 10, node, [111])
    _process(proc, 11, [*node[:-2], "--db=postgresql://h/db"], [333])  # a second worker, v6
    _process(proc, 12, ["python", "client.py"], [112])
    _process(proc, 20, ["nginx: master process"], [222])
    return proc


def test_the_processes_listening_on_a_port_are_found_on_v4_and_v6(tmp_path: Path) -> None:
    proc = _tree(tmp_path)
    assert listening_pids(8000, proc) == [10, 11]
    assert listening_pids(9000, proc) == [20]
    assert listening_pids(7000, proc) == []


def test_only_clusterchat_processes_on_this_machine_count_as_nodes(tmp_path: Path) -> None:
    proc = _tree(tmp_path)
    assert node_pids("127.0.0.1", 8000, proc) == [10, 11]
    assert node_pids("localhost", 8000, proc) == [10, 11]
    assert node_pids("127.0.0.1", 9000, proc) == [], "nginx is not a node"
    assert node_pids("192.0.2.7", 8000, proc) == [], "another machine's port says nothing here"


def test_a_nodes_database_is_read_from_its_command_line(tmp_path: Path) -> None:
    proc = _tree(tmp_path)
    assert database_of(10, proc) == "sqlite:////x/chat.db"
    assert database_of(11, proc) == "postgresql://h/db"
    assert database_of(20, proc) is None
    assert database_of(99, proc) is None, "a process that is gone"


_NGINX_CONF = """
stream {
    upstream clusterchat_tcp {
        server 127.0.0.1:8000 max_fails=1 fail_timeout=5s;
        server [::1]:8100 max_fails=1 fail_timeout=5s;
        server 127.0.0.1:8200;
    }
    server { listen 127.0.0.1:9000; proxy_pass clusterchat_tcp; }
}
http {
    upstream clusterchat_http {
        server 127.0.0.1:8001;
        server unix:/run/x.sock;
        server backend;
    }
}
"""


#: ``clusterchat up``'s run directory: nginx's command line names it, and
#: nginx is no clusterchat node for that.
_RUN = "clusterchat-run"


def _nginx_tree(tmp_path: Path, master: str) -> Path:
    """A /proc tree where nginx (a master and a worker) listens on 9000 in front of
    node A (8000 for TCP, 8001 for HTTP: one process) and node B (8100, two workers);
    nothing listens on 8200."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(
        _HEADER
        + _socket(0, 9000, "0A", 900)
        + _socket(1, 8000, "0A", 800)
        + _socket(2, 8001, "0A", 801)
    )
    (proc / "net" / "tcp6").write_text(_HEADER + _socket(0, 8100, "0A", 810, v6=True))
    (tmp_path / _RUN).mkdir()
    (tmp_path / _RUN / "nginx.conf").write_text(_NGINX_CONF)
    _process(proc, 30, [master], [900])
    _process(proc, 31, ["nginx: worker process"], [900])
    _process(
        proc, 40, ["python", "-m", "clusterchat", "node", "--db", "sqlite:////x/a.db"], [800, 801]
    )
    _process(proc, 41, ["clusterchat", "node", "--workers", "2"], [810])
    _process(proc, 42, ["clusterchat", "node", "--workers", "2"], [810])
    return proc


def test_the_upstream_servers_of_an_nginx_configuration_are_read_in_order() -> None:
    assert upstreams(_NGINX_CONF) == [
        ("127.0.0.1", 8000),
        ("::1", 8100),
        ("127.0.0.1", 8200),
        ("127.0.0.1", 8001),
    ]


def test_the_nodes_behind_nginx_are_found_from_its_configuration(tmp_path: Path) -> None:
    run = tmp_path / _RUN
    master = f"nginx: master process /usr/sbin/nginx -p {run}/ -c {run}/nginx.conf -e {run}/e.log"
    proc = _nginx_tree(tmp_path, master)
    # Node A once (its TCP and HTTP ports), node B with both workers, nothing on 8200.
    assert nodes_behind("127.0.0.1", 9000, proc) == [[40], [41, 42]]
    assert nodes_behind("127.0.0.1", 8100, proc) == [[41, 42]], "a node's own port"
    assert nodes_behind("192.0.2.7", 9000, proc) == []


def test_a_relative_nginx_configuration_is_read_under_its_prefix(tmp_path: Path) -> None:
    proc = _nginx_tree(tmp_path, f"nginx: master process nginx -p {tmp_path}/{_RUN}/ -c nginx.conf")
    assert nodes_behind("127.0.0.1", 9000, proc) == [[40], [41, 42]]


def test_an_nginx_whose_configuration_cannot_be_read_leads_nowhere(tmp_path: Path) -> None:
    proc = _nginx_tree(tmp_path, "nginx: master process nginx -c /nonexistent/nginx.conf")
    assert nodes_behind("127.0.0.1", 9000, proc) == []
    proc2 = _nginx_tree(tmp_path / "b", "nginx: master process nginx")
    assert nodes_behind("127.0.0.1", 9000, proc2) == [], "no -c: the built-in path, not read"
