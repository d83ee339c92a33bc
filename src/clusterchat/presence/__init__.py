"""Presence: who is online on which node."""
