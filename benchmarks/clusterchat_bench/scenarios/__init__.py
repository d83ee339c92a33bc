"""The bench scenarios, one module each, run by the coordinator.

Each module has one ``run_*(ctx)`` function returning a frozen dataclass of
figures; ``clusterchat_bench.runner`` runs them in ``SCENARIOS`` order.
"""

__all__: list[str] = []
