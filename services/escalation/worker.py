"""The escalation service's Celery app, for `celery -A services.escalation.worker worker`.

`tether worker escalation` runs the same app from the installed package (tether.escalation.worker);
this module is where a deployment that runs Celery directly points it.
"""

from tether.escalation.worker import app

__all__ = ["app"]
