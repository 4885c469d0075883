"""The scripted model's part in the offline demo: what a careful support agent would do.

It reads only the conversation, like a real model, and makes one deliberate
mistake (an order id sent as "#1003") so the demo shows a malformed tool call
being refused, fed back, and corrected.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tether.models import ModelResponse, text, tool_call
from tether.state import ChatMessage


def _observations(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.content or "{}") for m in messages if m.role == "tool"]


def _money(cents: int) -> str:
    return f"${cents / 100:.2f}"


def support_desk_script(messages: list[ChatMessage]) -> ModelResponse:
    goal = next(m.content or "" for m in messages if m.role == "user")
    seen = _observations(messages)
    last = seen[-1] if seen else {}
    if "error" in last and len(seen) >= 3:
        return text(f"I could not complete this: {last['error']}")

    email = re.search(r"[^@\s]+@[^@\s]+\.\w+", goal)
    order = re.search(r"(#?)(\d{4,})", goal)

    if "refund" in goal.lower() and order:
        order_id = int(order.group(2))
        if not seen:
            return tool_call("lookup_order", {"order_id": order_id})
        result = last.get("result", {})
        if "human_answer" in last:
            return text(f"Per {last['by']}: {last['human_answer']}")
        if "refund_id" in result:
            return text(
                f"Refunded {_money(result['amount_cents'])} for order {order_id} "
                f"(refund {result['refund_id']})."
            )
        if "item" in result:
            return tool_call(
                "issue_refund",
                {
                    "order_id": order_id,
                    "amount_cents": result["amount_cents"],
                    "reason": goal[:200],
                },
            )
        return text(f"I could not refund order {order_id}: {last.get('error')}")

    if email:
        if not seen:
            return tool_call("find_customer", {"email": email.group(0)})
        result = last.get("result")
        if isinstance(result, dict) and "customer_id" in result:
            return tool_call("orders_of_customer", {"customer_id": result["customer_id"]})
        if isinstance(result, list):
            listing = "; ".join(f"#{o['order_id']} {o['item']} ({o['status']})" for o in result)
            return text(f"You have {len(result)} orders: {listing}.")
        return text(f"I could not find that customer: {last.get('error')}")

    if order:
        if not seen and order.group(1) == "#":
            return tool_call("lookup_order", {"order_id": order.group(0)})
        result = last.get("result")
        if not isinstance(result, dict):
            if (
                "error" in last
                and "validation" not in str(last["error"])
                and "invalid" not in str(last["error"])
            ):
                return text(f"I could not find that order: {last['error']}")
            return tool_call("lookup_order", {"order_id": int(order.group(2))})
        tracking = f", tracking {result['tracking']}" if result.get("tracking") else ""
        return text(
            f"Order {result['order_id']} ({result['item']}) is {result['status']}{tracking}."
        )

    return text(
        "I can help with orders, customers and refunds: give me an order number or an email."
    )
