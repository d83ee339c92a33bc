"""``bench.png``: delivered rate and p99 latency against offered rate (matplotlib, Agg)."""

from pathlib import Path

from clusterchat_bench.results import BenchReport

__all__ = ["write_plot"]


def write_plot(report: BenchReport, path: Path) -> bool:
    """Draw the ``pairs`` and ``groups`` steps; return False when there is nothing to draw."""
    series = [
        (label, figures.run.steps)
        for label, figures in (
            ("pairs (msgs/s)", report.pairs),
            ("groups (member-msgs/s)", report.groups),
        )
        if figures is not None and figures.run.steps
    ]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axis, p99_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    top = 0.0
    for label, steps in series:
        offered = [s.offered_per_s for s in steps]
        top = max(top, *offered)
        rate_axis.plot(offered, [s.delivered_per_s for s in steps], marker="o", label=label)
        p99_axis.plot(offered, [s.p99_ms for s in steps], marker="o", label=label)
    rate_axis.plot([0, top], [0, top], linestyle=":", color="grey", label="delivered = offered")
    p99_axis.axhline(
        report.options.get("p99_limit_ms", 100.0),
        linestyle=":",
        color="red",
        label="p99 bound of 'sustained'",
    )
    for axis in (rate_axis, p99_axis):
        axis.set_xscale("log")
        axis.set_xlabel("offered per second")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    rate_axis.set_yscale("log")
    p99_axis.set_yscale("log")
    rate_axis.set_ylabel("delivered per second")
    rate_axis.set_title("delivered rate")
    p99_axis.set_ylabel("p99 latency (ms, log)")
    p99_axis.set_title("p99 latency")
    cores = report.machine.get("cores")
    smoke = " (smoke run: --quick)" if report.options.get("quick") else ""
    title = f"clusterchat bench, {report.cluster.get('nodes')} nodes, {cores} cores{smoke}"
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
