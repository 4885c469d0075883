"""What every service worker shares: the task base, dead letters, time limits, health, and
the launcher that patches gevent before Celery loads (launch)."""
