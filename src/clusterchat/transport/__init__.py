"""clusterchat.transport."""
