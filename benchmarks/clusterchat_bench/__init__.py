"""``clusterchat bench``: throughput, latency and capacity of a real cluster.

The coordinator (``runner``) starts or targets a cluster (``cluster``), starts
load-generator processes (``workers`` / ``loadgen``) that drive it with
``ChatClient`` connections, runs the scenarios (``scenarios/``) and writes the
figures (``report``, ``plot``). ``docs/performance.md`` and
``benchmarks/README.md`` explain what each scenario measures.
"""

from clusterchat_bench.main import run
from clusterchat_bench.options import SCENARIOS, BenchOptions

__all__ = ["SCENARIOS", "BenchOptions", "run"]
