"""The console service's ASGI app, for `uvicorn services.console.app:app`.

`tether console` serves the same app from the installed package (tether.api.service);
this module is where a deployment that runs uvicorn directly points it.
"""

from tether.api.service import service_app

app = service_app()

__all__ = ["app"]
