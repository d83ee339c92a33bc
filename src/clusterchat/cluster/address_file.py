"""Where a running ``clusterchat up`` can be reached: ``<run dir>/cluster.json``.

``up`` writes it once the cluster is ready and removes it when it stops, so
that ``clusterchat status`` and ``clusterchat client`` find the cluster with
no arguments (run from the same directory, or given ``--dir``).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["FILE_NAME", "ClusterAddress", "read_address", "remove_address", "write_address"]

FILE_NAME = "cluster.json"


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """host:port of the public (nginx) port, the Redis URL, the CA file when TLS is on."""

    host: str
    port: int
    redis: str
    ca: str | None = None


def write_address(directory: Path, address: ClusterAddress) -> None:
    path = directory / FILE_NAME
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(address), indent=1) + "\n")
    temporary.replace(path)


def read_address(directory: Path) -> ClusterAddress | None:
    """The address a running ``up`` wrote in ``directory``, or None if there is none."""
    try:
        data = json.loads((directory / FILE_NAME).read_text())
        return ClusterAddress(
            host=str(data["host"]),
            port=int(data["port"]),
            redis=str(data["redis"]),
            ca=None if data.get("ca") is None else str(data["ca"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_address(directory: Path) -> None:
    (directory / FILE_NAME).unlink(missing_ok=True)
