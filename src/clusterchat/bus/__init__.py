"""Cross-node delivery: the Bus interface and its implementations."""
