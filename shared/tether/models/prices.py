"""USD per million tokens (input, output) for models whose price we know.

Override or extend with TETHER_MODEL_PRICES='{"my-model": [0.5, 1.5]}' (environment or .env).
"""

from __future__ import annotations

from tether.config import get_settings

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
}


def price_table() -> dict[str, tuple[float, float]]:
    return {**DEFAULT_PRICES, **get_settings().model_prices}


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    """Cost of one call; a model missing from the table costs 0 until TETHER_MODEL_PRICES names it."""
    prices = price_table().get(model)
    if prices is None:
        return 0.0
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000


def estimate_tokens(text: str) -> int:
    """Roughly four characters per token, the usual rule for English and JSON."""
    return max(1, len(text) // 4)
