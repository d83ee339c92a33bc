"""The ``clusterchat`` command: parses arguments, then calls; no logic here."""

import argparse
import asyncio
import importlib
import logging
import ssl
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from clusterchat import __version__
from clusterchat.cluster.address_file import read_address
from clusterchat.cluster.launcher import ClusterSpec
from clusterchat.settings import Settings

__all__ = ["main", "run_bench"]

#: What a node uses for a setting given nowhere; the help texts show these. The
#: node's flags themselves default to None ("not given"), so that the
#: environment and the TOML file still apply (``Settings.load``).
_DEFAULTS = Settings()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def _node_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    node = sub.add_parser(
        "node",
        help="run one chat node in the foreground",
        description="run one chat node in the foreground",
    )
    node.add_argument("--config", type=Path, help="TOML file with settings")
    node.add_argument("--host", help=f"address to listen on (default {_DEFAULTS.host})")
    node.add_argument("--port", type=int, help=f"TCP port (default {_DEFAULTS.port})")
    node.add_argument("--db", help=f"database URL (default {_DEFAULTS.db})")
    node.add_argument(
        "--redis",
        help="Redis URL: join a cluster (default: single node); redis+cluster://host:port,..."
        " for a Redis Cluster (sharded pub/sub)",
    )
    node.add_argument("--node-id", dest="node_id", help="node name (default: random)")
    node.add_argument("--prefix", help=f"Redis channel/key prefix (default {_DEFAULTS.prefix})")
    node.add_argument(
        "--single-session",
        dest="single_session",
        action="store_const",
        const=True,
        help="refuse a second login of the same user (classic behaviour)",
    )
    node.add_argument(
        "--max-frame",
        dest="max_frame",
        type=int,
        help=f"largest frame in bytes (default {_DEFAULTS.max_frame})",
    )
    node.add_argument(
        "--max-rate",
        dest="max_rate",
        type=float,
        help=f"requests/s per client (default {_DEFAULTS.max_rate:g})",
    )
    node.add_argument(
        "--max-burst",
        dest="max_burst",
        type=float,
        help=f"requests at once above the rate (default {_DEFAULTS.max_burst:g})",
    )
    node.add_argument(
        "--stall-timeout",
        dest="stall_timeout",
        type=float,
        help="give up on a client that reads nothing for this many seconds"
        f" (default {_DEFAULTS.stall_timeout:g})",
    )
    node.add_argument(
        "--max-connections",
        dest="max_connections",
        type=int,
        help=f"connections the node takes at once (default {_DEFAULTS.max_connections})",
    )
    node.add_argument(
        "--max-per-address",
        dest="max_per_address",
        type=int,
        help=f"connections from one client address at once (default {_DEFAULTS.max_per_address})",
    )
    node.add_argument(
        "--workers",
        type=int,
        help="node processes sharing the port with SO_REUSEPORT, each a full node"
        " (default: one per core; 1: this process only)",
    )
    node.add_argument(
        "--reuse-port",
        dest="reuse_port",
        action="store_const",
        const=True,
        help="share the port with other processes (what --workers starts each worker with)",
    )
    node.add_argument(
        "--proxy-protocol",
        dest="proxy_protocol",
        action="store_const",
        const=True,
        help="connections begin with nginx's PROXY header (the client's address)",
    )
    node.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate: listen with TLS")
    node.add_argument("--tls-key", dest="tls_key", help="PEM private key of --tls-cert")
    node.add_argument(
        "--sweep-interval",
        dest="sweep_interval",
        type=float,
        help="seconds between two log-head checks of the local users"
        f" (default {_DEFAULTS.sweep_interval:g}; 0: off)",
    )
    node.add_argument(
        "--log-level",
        dest="log_level",
        help=f"DEBUG, INFO, WARNING... (default {_DEFAULTS.log_level})",
    )


def _client_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    client = sub.add_parser(
        "client",
        help="the interactive terminal client",
        description="the interactive terminal client",
    )
    client.add_argument("--tls", action="store_true", help="connect with TLS")
    client.add_argument(
        "--ca", type=Path, help="with --tls: trust this PEM certificate (e.g. up's self-signed one)"
    )
    client.add_argument(
        "--dir",
        type=Path,
        default=ClusterSpec.dir,
        help="without HOST: the `clusterchat up` running in this directory"
        f" (default ./{ClusterSpec.dir}), else {ClusterSpec.host} {ClusterSpec.port}",
    )
    client.add_argument(
        "host", nargs="?", help="the server's address (default: the cluster of --dir)"
    )
    client.add_argument(
        "port",
        nargs="?",
        type=int,
        default=ClusterSpec.port,
        help=f"the server's port (default {ClusterSpec.port})",
    )


def _up_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    up = sub.add_parser(
        "up",
        help="run a local cluster: redis-server, N nodes, nginx",
        description="run a local cluster: redis-server, N nodes, nginx",
    )
    up.add_argument(
        "--nodes",
        type=int,
        default=ClusterSpec.nodes,
        help=f"chat nodes (default {ClusterSpec.nodes})",
    )
    up.add_argument(
        "--port",
        type=int,
        default=ClusterSpec.port,
        help=f"public TCP port (default {ClusterSpec.port})",
    )
    up.add_argument(
        "--workers",
        type=int,
        help="processes per node, sharing its port (default: the cores divided among"
        " the nodes, at least 1)",
    )
    up.add_argument("--db", help="database URL (default: SQLite in --dir)")
    up.add_argument(
        "--dir",
        type=Path,
        default=ClusterSpec.dir,
        help=f"run directory: database, logs, configs (default ./{ClusterSpec.dir})",
    )
    up.add_argument(
        "--redis-persistence", action="store_true", help="keep Redis snapshots (default off)"
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on the public port, with a self-signed certificate made in DIR/tls",
    )


def _status_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    status = sub.add_parser(
        "status",
        help="live nodes and online users, from Redis",
        description="live nodes and online users, from Redis",
    )
    status.add_argument(
        "--redis", help="the cluster's Redis URL (default: the one `up` runs in --dir)"
    )
    status.add_argument(
        "--dir",
        type=Path,
        default=ClusterSpec.dir,
        help=f"run directory of `clusterchat up` (default ./{ClusterSpec.dir})",
    )
    status.add_argument(
        "--prefix", default=_DEFAULTS.prefix, help=f"key prefix (default {_DEFAULTS.prefix})"
    )


#: The separate distribution (``benchmarks/``) that ``clusterchat bench`` runs.
BENCH_PACKAGE = "clusterchat_bench"
BENCH_INSTALL = (
    "the benchmark is a separate package, not installed here:"
    " pip install -e benchmarks (from a clusterchat checkout; ./scripts/bootstrap does it)"
)


def _bench_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    # Listed for `clusterchat --help` only: main() hands `bench ...` to the bench package.
    sub.add_parser(
        "bench",
        help="measure a real cluster (the separate clusterchat-bench package, benchmarks/)",
        add_help=False,
    )


def run_bench(argv: Sequence[str]) -> int:
    """Run ``clusterchat bench`` from the benchmark package, or say how to install it.

    The benchmark lives beside the product (``benchmarks/clusterchat_bench``);
    clusterchat never imports it except here, by name, when asked to.

    Args:
        argv: The arguments after ``bench``.

    Returns:
        The bench's exit status, or 1 (with a message on standard error) when
        the package is not installed.

    Raises:
        ModuleNotFoundError: The bench is installed but one of its own imports is missing.
    """
    try:
        bench = importlib.import_module(f"{BENCH_PACKAGE}.main")
    except ModuleNotFoundError as exc:
        if exc.name not in (BENCH_PACKAGE, f"{BENCH_PACKAGE}.main"):
            raise
        print(f"clusterchat bench: {BENCH_INSTALL}", file=sys.stderr)
        return 1
    status: int = bench.main(list(argv), prog="clusterchat bench")
    return status


def _db_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    db = sub.add_parser(
        "db",
        help="create or upgrade a database's schema, or show its revision",
        description="Create or upgrade a database's schema (Alembic migrations), or show"
        " its revision. Nodes refuse a database that is not at the newest revision;"
        " `clusterchat up` upgrades its database before it starts its nodes.",
    )
    actions = db.add_subparsers(dest="action", required=True)
    for action, words in (
        ("upgrade", "bring the database to the newest revision (creates an empty one)"),
        ("current", "show the database's revision and whether it is the newest"),
    ):
        parser = actions.add_parser(action, help=words, description=words)
        parser.add_argument(
            "--db", help="database URL (default: the node's, sqlite:///clusterchat.db)"
        )


def _import_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    words = (
        "bring a database of the original C++ ChatServer into clusterchat: users (ids, names,"
        " passwords hashed on the way in), friends (made mutual), groups, members and"
        " offline messages; a second run changes nothing"
    )
    parser = sub.add_parser("import-classic", help=words.split(":")[0], description=words)
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the original's MySQL database, e.g. mysql://root:123456@127.0.0.1:3306/chat",
    )
    parser.add_argument(
        "--db", help="clusterchat's database, at the newest revision (default: the node's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterchat",
        description="A cluster chat server: nodes behind nginx, joined by Redis"
        " publish/subscribe. `clusterchat up` runs a local cluster;"
        " `clusterchat COMMAND --help` tells more.",
    )
    parser.add_argument("--version", action="version", version=f"clusterchat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _node_parser(sub)
    _client_parser(sub)
    _up_parser(sub)
    _status_parser(sub)
    _bench_parser(sub)
    _db_parser(sub)
    _import_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        return run_bench(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "node":
        flags = {k: v for k, v in vars(args).items() if k not in {"command", "config"}}
        try:
            settings = Settings.load(flags, config=args.config)
        except (ValueError, OSError) as exc:
            print(f"clusterchat node: {exc}", file=sys.stderr)
            return 2
        from clusterchat.cluster.workers import run_workers, workers_for

        workers = workers_for(settings.workers)
        if workers > 1:
            return run_workers(
                arguments[1:],
                host=settings.host,
                port=settings.port,
                workers=workers,
                node_id=settings.node_id,
            )
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from clusterchat.node import run_node

        return _run(run_node(settings))
    if args.command == "client":
        from clusterchat.client.terminal import run_terminal

        host, port, ca = args.host, args.port, args.ca
        if host is None:
            running = read_address(args.dir)
            host = ClusterSpec.host if running is None else running.host
            if running is not None:
                port = running.port
                if running.ca is not None and ca is None:
                    ca = Path(running.ca)
        tls = None
        if args.tls or ca is not None:
            tls = ssl.create_default_context(cafile=str(ca) if ca else None)
        return _run(run_terminal(host, port, tls=tls))
    if args.command == "up":
        from clusterchat.cluster.launcher import run_cluster

        if args.nodes < 1:
            print("clusterchat up: --nodes must be at least 1", file=sys.stderr)
            return 2
        from clusterchat.cluster.workers import workers_for

        spec = ClusterSpec(
            nodes=args.nodes,
            workers=args.workers or max(1, workers_for(0) // args.nodes),
            port=args.port,
            dir=args.dir,
            db=args.db,
            redis_persistence=args.redis_persistence,
            tls=args.tls,
        )
        return run_cluster(spec)
    if args.command == "status":
        from clusterchat.cluster.status import format_status, read_status

        redis_url = args.redis
        if redis_url is None:
            running = read_address(args.dir)
            if running is None:
                print(
                    f"clusterchat status: no clusterchat up is running in {args.dir}:"
                    " give its --dir, or --redis URL",
                    file=sys.stderr,
                )
                return 2
            redis_url = running.redis
        try:
            nodes = asyncio.run(read_status(redis_url, args.prefix))
        except Exception as exc:
            print(f"clusterchat status: {exc}", file=sys.stderr)
            return 1
        print(format_status(nodes))
        return 0
    if args.command == "db":
        from clusterchat.database import run_current, run_upgrade

        try:
            url = Settings.load({"db": args.db}).db
        except (ValueError, OSError) as exc:
            print(f"clusterchat db: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(run_upgrade(url) if args.action == "upgrade" else run_current(url))
    if args.command == "import-classic":
        from clusterchat.database import run_import

        try:
            settings = Settings.load({"db": args.db})
        except (ValueError, OSError) as exc:
            print(f"clusterchat import-classic: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(run_import(args.source, settings))
    raise AssertionError(args.command)
