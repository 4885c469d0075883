"""An agent whose model endpoint and tool are rate limited (docs/guides/rate-limits.md)."""

import os

from tether import Agent, tool
from tether.models.openai import OpenAIModel
from tether.store.ratelimits import RateLimit


@tool(rate_limit_per_s=5)
def geocode(address: str) -> str:
    """Coordinates of an address, from an API that allows 5 calls a second."""
    return {"1 Main St": "52.37,4.89"}.get(address, "unknown")


courier = Agent(
    name="courier",
    instructions="Find where parcels go. Look addresses up; never guess.",
    model=OpenAIModel("gpt-4o-mini", base_url=os.environ.get("COURIER_MODEL_URL")),
    tools=[geocode],
    # Shared by every worker calling gpt-4o-mini at this endpoint; a limit in
    # TETHER_MODEL_RATE_LIMITS for the same endpoint and model takes precedence.
    model_rate_limit=RateLimit(requests=500, tokens=200_000, window_s=60),
)
