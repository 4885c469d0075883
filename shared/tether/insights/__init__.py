"""How agents do, read back from run records: stats, the live top view, feedback."""
