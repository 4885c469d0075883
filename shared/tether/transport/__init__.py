"""Messages between services: the Celery app, the reliable Redis channel, wire messages."""
