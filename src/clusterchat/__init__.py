"""clusterchat: a cluster chat server speaking the classic ChatServer protocol."""

__all__ = ["__version__"]

__version__ = "0.1.0"
