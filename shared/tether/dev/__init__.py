"""The embedded stack for `tether dev`, the demo and the tests: a Redis it owns and the services."""
