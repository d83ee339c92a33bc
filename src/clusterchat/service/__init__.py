"""clusterchat.service."""
