"""clusterchat.cluster."""
