"""clusterchat.client."""
