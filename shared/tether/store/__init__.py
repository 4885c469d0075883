"""Run state in Redis: runs, their event logs, budgets, leases, keys and the Lua beside them."""
