"""Publish a task from Python and wait for its run (docs: Publishing events).

Needs the project installed and TETHER_REDIS_URL pointing at the workers' Redis.
"""

from tether import submit, wait

run_id = submit("support_desk", "Where is order 1001?", event_id="crm-123", budget={"max_steps": 5})
state = wait(run_id, timeout_s=60)  # optional: block until the run ends
print(state.status, state.result or state.partial_result)
