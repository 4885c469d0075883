"""An agent with long-term memory per customer (docs: Memory).

Its event's metadata names the subject: submit(..., metadata={"customer_id": "cust-ana"}).
"""

from tether import Agent, ScriptedModel
from tether.memory import MemoryConfig
from tether.models import text, tool_call

concierge = Agent(
    name="concierge",
    instructions="Remember what the customer prefers; recall it before you answer.",
    model=ScriptedModel(
        [
            tool_call("remember", {"key": "shirt_size", "value": "M"}),
            text("Noted: you wear M."),
        ],
        label="concierge",
    ),
    memory=MemoryConfig(
        subject_key="customer_id", max_items=50, max_bytes=64 * 1024, ttl_s=30 * 24 * 3600
    ),
)
