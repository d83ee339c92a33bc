"""Errors raised while starting and supervising the cluster's child processes."""

__all__ = ["ChildFailed", "MissingDependency"]


class ChildFailed(RuntimeError):
    """A child process exited, or did not become ready in time.

    The message names the child and ends with the tail of its log.
    """


class MissingDependency(RuntimeError):
    """An external program the cluster needs (redis-server, nginx) is not installed.

    The message says which Debian package provides it.
    """
