"""What every scenario gets: options, the cluster, the workers, a display, unique names."""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from clusterchat_bench.cluster import LOG_WRITER, BenchCluster
from clusterchat_bench.commands import Endpoint
from clusterchat_bench.cpu import CpuMeter
from clusterchat_bench.options import BenchOptions
from clusterchat_bench.workers import WorkerPool

__all__ = ["Display", "ScenarioContext", "deal"]

_T = TypeVar("_T")


class Display(Protocol):
    """Live output: a progress bar per phase, and lines of text."""

    def phase(self, label: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A progress bar for ``total`` units; the callable sets how many are done."""
        ...

    def note(self, text: str) -> None:
        """Print one line above the progress bars."""
        ...


@dataclass
class ScenarioContext:
    """Shared by the scenarios of one run.

    Attributes:
        options: The run's options.
        cluster: The cluster under test.
        workers: The load-generator processes.
        display: Live output.
        token: A short string unique to this run, in every user and group name.
        password: The password of every bench user.
    """

    options: BenchOptions
    cluster: BenchCluster
    workers: WorkerPool
    display: Display
    token: str
    password: str = "bench-pw"

    def meter(self) -> CpuMeter:
        """Start measuring the CPU use of the cluster's processes and of the load generators."""
        return CpuMeter({**self.cluster.processes(), "loadgen": self.workers.pids})

    def node_names(self) -> list[str]:
        """The CPU meter's names of the cluster's nodes and of their SQLite log writer
        (none when driving a running cluster whose nodes were not found)."""
        nodes = self.cluster.node_names()
        return [*nodes, LOG_WRITER] if nodes else []

    def endpoint(self, number: int) -> Endpoint:
        """Where user number ``number`` connects: node ``number`` mod N, or the balancer."""
        if self.cluster.front is not None:
            return self.cluster.front
        endpoints = self.cluster.endpoints
        return endpoints[number % len(endpoints)]


def deal(units: Sequence[Sequence[_T]], hands: int) -> list[list[_T]]:
    """Deal whole units (a pair, a group) round-robin into ``hands`` flat lists."""
    result: list[list[_T]] = [[] for _ in range(hands)]
    for index, unit in enumerate(units):
        result[index % hands].extend(unit)
    return result
