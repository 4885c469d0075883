"""Example agents that a newcomer runs first."""
