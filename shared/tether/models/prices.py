"""What a model call costs, and bounds on its tokens and cost that budgets reserve.

Prices come from the maintained genai-prices table; TETHER_MODEL_PRICES='{"my-model":
[0.5, 1.5]}' (USD per million input and output tokens, environment or .env) names
models it lacks and takes precedence over it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tether.config import get_settings
from tether.errors import UnknownModelPriceError
from tether.models.tokens import chat_token_bound
from tether.store.state import openai_json_size

if TYPE_CHECKING:
    from genai_prices.types import PriceCalculation

    from tether.models.base import ModelClient
    from tether.store.state import ChatMessage
    from tether.transport.wire import BudgetLimits

# Chat templates wrap the messages in text of their own: role markers, which the
# JSON keys counted below outweigh, and fixed preambles, the longest common ones
# being the tool instructions of Qwen 2.5 and Llama 3.1 (under 500 bytes each).
TEMPLATE_ALLOWANCE_TOKENS = 512


def _genai(model: str, input_tokens: int, output_tokens: int) -> PriceCalculation | None:
    # Imported on first use: it takes a tenth of a second, which every CLI command would pay.
    from genai_prices import Usage, calc_price

    try:
        return calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens), model)
    except LookupError:
        return None


def known_price(model: str) -> bool:
    return model in get_settings().model_prices or _genai(model, 0, 0) is not None


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    """Cost of one call; 0 for a model without a price, which no run with max_cost_usd may use."""
    override = get_settings().model_prices.get(model)
    if override is not None:
        return (input_tokens * override[0] + output_tokens * override[1]) / 1_000_000
    price = _genai(model, input_tokens, output_tokens)
    return float(price.total_price) if price is not None else 0.0


def cost_bound_usd(model: str, tokens: int) -> float | None:
    """The most a call using at most ``tokens`` tokens, input and output together, can cost.

    Every token is priced at the dearer of the two rates, at the tier ``tokens``
    reaches (tiers only ever raise the rate); None where the price is unknown.
    """
    override = get_settings().model_prices.get(model)
    if override is not None:
        return tokens * max(override) / 1_000_000
    price = _genai(model, tokens, tokens)
    if price is None:
        return None
    # Anything besides the token prices (a per-request fee) is owed on top.
    fees = price.total_price - price.input_price - price.output_price
    return float(max(price.input_price, price.output_price) + max(fees, Decimal(0)))


def require_prices(client: ModelClient, limits: BudgetLimits) -> None:
    """Refuse a cost budget that could not be enforced: a model of ``client`` has no price."""
    if limits.max_cost_usd is None:
        return
    unpriced = [m for m in client.billed_models if not known_price(m)]
    if unpriced:
        raise UnknownModelPriceError(unpriced, limits.max_cost_usd)


def reserved_cost_usd(client: ModelClient, tokens: int, limits: BudgetLimits) -> float:
    """What a call of at most ``tokens`` tokens reserves from a cost budget, before it is made.

    Nothing where the run has no cost budget; raises UnknownModelPriceError where
    it has one and a model's price is unknown.
    """
    if limits.max_cost_usd is None:
        return 0.0
    require_prices(client, limits)
    bounds = [cost_bound_usd(m, tokens) or 0.0 for m in client.billed_models]
    return max(bounds, default=0.0)


def token_bound(text: str) -> int:
    """At most one token per UTF-8 byte of ``text``.

    Byte-level BPE vocabularies (tiktoken's, Llama 3's, Qwen's, Mistral's Tekken)
    have no token shorter than one byte, and SentencePiece ones fall back to one
    token per byte; one token per character would not hold (a CJK character or an
    emoji is often two or more tokens).
    """
    return len(text.encode("utf-8"))


def prompt_token_bound(
    messages: list[ChatMessage], tools: list[dict[str, Any]], model: str | None = None
) -> int:
    """An upper bound on the input tokens of a chat completion with ``messages`` and ``tools``.

    Counted by ``model``'s tokenizer where Tether ships it (OpenAI's models, see
    tether.models.tokens), within about a fifth of the real count for English; else
    one token per UTF-8 byte, three to four times the real count for English.
    """
    if model is not None:
        counted = chat_token_bound(model, messages, tools)
        if counted is not None:
            return counted
    # Its bytes as token_bound would count them in the JSON of the whole conversation.
    conversation = openai_json_size(messages, utf8=True)
    # Templates that print tools as indented JSON (Llama 3.1's) print more bytes than compact JSON.
    offered = json.dumps(tools, ensure_ascii=False, indent=4) if tools else ""
    return conversation + token_bound(offered) + TEMPLATE_ALLOWANCE_TOKENS


def typical_tokens(text: str) -> int:
    """About four characters per token, the usual figure for English and JSON.

    For stand-ins that report usage as a real model would (the scripted model, the
    test endpoint); never for a reservation, which needs ``token_bound``.
    """
    return typical_tokens_of(len(text))


def typical_tokens_of(chars: int) -> int:
    """typical_tokens of a text ``chars`` characters long."""
    return max(1, -(-chars // 4))
