"""What a run says around its figures: the machine, the cluster's configuration, smoke or not.

Printed before the first scenario and again after the tables, so that a copy
of either end of the output says where the figures come from:

- the machine (cores, CPU model, memory, kernel, Python);
- the cluster: the bench's own (Redis and nodes with the command lines
  ``clusterchat up`` uses, the password hashing in effect, each limit
  raised for load generation with its default, the processes per node
  (``--node-workers``) and the database (``--db``)), or a targeted one (its
  configuration is whatever it was started with);
- with ``--quick``, that this is a smoke run: its sizes only show that every
  scenario runs, its figures are not capacity figures, and nothing is judged.
"""

from collections.abc import Mapping
from typing import Any

__all__ = ["SMOKE_RUN", "header_lines", "machine_line"]

SMOKE_RUN = (
    "SMOKE RUN (--quick): small sizes that only show the scenarios run;"
    " its figures are not capacity figures and nothing is judged"
)


def machine_line(machine: Mapping[str, Any]) -> str:
    """``machine: 2 cores, AMD EPYC..., 3.8 GiB, Linux 6.1, CPython 3.11.7``."""
    memory = machine.get("memory_bytes")
    parts = [
        f"{machine.get('cores')} cores",
        str(machine.get("cpu_model") or "CPU model unknown"),
        f"{memory / 2**30:.1f} GiB" if memory else "memory unknown",
        f"Linux {machine.get('kernel')}",
        f"{machine.get('python_implementation')} {machine.get('python')}",
    ]
    return "machine: " + ", ".join(parts)


def _number(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def header_lines(machine: Mapping[str, Any], cluster: Mapping[str, Any], quick: bool) -> list[str]:
    """The header of a run.

    Args:
        machine: ``machine_info()``.
        cluster: The report's cluster description (``mode``, and for an own
            cluster ``node_configuration``).
        quick: Whether this is a ``--quick`` run.

    Returns:
        Lines of text, without newlines.
    """
    lines = [SMOKE_RUN] if quick else []
    lines.append(machine_line(machine))
    config = cluster.get("node_configuration")
    if cluster.get("mode") != "own" or not config:
        lines.append("cluster: a running one (--target): its configuration is its own")
    else:
        lines.append("redis: the configuration `clusterchat up` gives users (same command line)")
        hashing = config["password_hashing"]
        params = (
            f"argon2 time cost {hashing['argon2_time_cost']}, {hashing['argon2_memory_kib']:,} KiB"
        )
        if hashing["cheap_hashing"]:
            lines.append(
                f"nodes: CHEAP password hashing (--cheap-hashing: {params}; a default node"
                " uses time cost {argon2_time_cost}, {argon2_memory_kib:,} KiB):"
                " login rates are not a default node's".format(**hashing["defaults"])
            )
        else:
            lines.append(f"nodes: default password hashing, as a node ships ({params})")
        raised = ", ".join(
            f"{name} {_number(v['default'])} -> {_number(v['bench'])}"
            for name, v in config["raised_for_load_generation"].items()
        )
        lines.append(f"nodes: raised for load generation: {raised}")
        lines.append(_workers_line(int(cluster.get("node_workers") or 1)))
        database = cluster.get("database")
        if database:
            lines.append(_database_line(database))
    return lines


def _workers_line(workers: int) -> str:
    if workers == 1:
        return "nodes: one process each (--node-workers 1)"
    return (
        f"nodes: {workers} worker processes each (--node-workers {workers}:"
        f" `clusterchat node --workers {workers}`, a supervisor and {workers} workers"
        " sharing the node's port); a node's CPU and RSS figures include its workers"
    )


def _database_line(database: Mapping[str, Any]) -> str:
    kind = database.get("kind")
    if database.get("private_server"):
        return (
            f"database: {kind}, a private server started for this run"
            f" ({database.get('server')}, settings: {database.get('server_settings')}),"
            " shared by the nodes"
        )
    if database.get("given"):
        return f"database: {kind} given with --db ({database.get('url')}), shared by the nodes"
    return f"database: {kind}, one file of the bench's own, shared by the nodes"
