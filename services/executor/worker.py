"""The executor service's Celery app, for `celery -A services.executor.worker worker`.

`tether worker executor` runs the same app from the installed package (tether.executor.worker);
this module is where a deployment that runs Celery directly points it.
"""

from tether.executor.worker import app

__all__ = ["app"]
