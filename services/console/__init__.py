"""The console service: the HTTP API and web console, an ASGI app; thin, the logic lives in shared/tether."""
