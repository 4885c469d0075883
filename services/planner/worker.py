"""The planner service's Celery app, for `celery -A services.planner.worker worker`.

`tether worker planner` runs the same app from the installed package (tether.planner.worker);
this module is where a deployment that runs Celery directly points it. On a gevent pool, run
Celery's command as `python -m tether.worker.launch -A services.planner.worker worker -P gevent`
(see tether.worker.launch for why).
"""

from tether.planner.worker import app

__all__ = ["app"]
