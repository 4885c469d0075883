"""Escalations: runs that wait for a human, webhooks about them, and who may decide."""
