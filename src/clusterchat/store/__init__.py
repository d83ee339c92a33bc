"""clusterchat.store."""
