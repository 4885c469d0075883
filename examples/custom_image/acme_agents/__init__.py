"""ACME's agents: the package a team adds to the Tether image (see ../Dockerfile)."""
