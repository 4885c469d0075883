"""The escalation service: one Celery worker, thin; the logic lives in shared/tether."""
