"""The web console: server-rendered pages for the people who watch runs and decide
escalations (runs, a run's timeline, the escalation inbox), mounted into the HTTP API's
app by ``tether.console.pages.include``. Its assets are files in this package: nothing is
fetched at run time."""
