"""The machine and software a run measured: cores, memory, CPU, versions."""

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import clusterchat
from clusterchat import __version__
from clusterchat.cluster.processes import MissingDependency, find_executable

__all__ = ["machine_info", "versions"]

_PACKAGES = ("redis", "hiredis", "msgspec", "uvloop", "sqlalchemy", "rich", "matplotlib")


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, kernel and Python of this machine."""
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cores": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory_bytes": int(mem_kib.split()[0]) * 1024 if mem_kib else None,
        "kernel": platform.release(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def _program_version(argv: list[str]) -> str | None:
    try:
        program = find_executable(argv[0], argv[0])
        done = subprocess.run(
            [program, *argv[1:]], capture_output=True, text=True, timeout=10, check=False
        )
    except (MissingDependency, OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _git_revision() -> str | None:
    """The commit of clusterchat's checkout (the code measured), ``+dirty`` when changed."""
    root = Path(clusterchat.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if changes else commit


def versions() -> dict[str, str | None]:
    """clusterchat (and its git commit), its main libraries, redis-server and nginx."""
    result: dict[str, str | None] = {"clusterchat": __version__, "git": _git_revision()}
    for package in _PACKAGES:
        try:
            result[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            result[package] = None
    for program, argv in (
        ("redis-server", ["redis-server", "--version"]),
        ("redis-benchmark", ["redis-benchmark", "--version"]),
        ("nginx", ["nginx", "-v"]),
    ):
        result[program] = _program_version(argv)
    return result
