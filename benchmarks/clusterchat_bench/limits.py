"""Raising this process's open-file limit, for thousands of connections.

Children inherit the limit, so raising it in the coordinator before starting
nodes and load generators raises it for all of them.
"""

import resource

__all__ = ["raise_open_files"]


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft
