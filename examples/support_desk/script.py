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
from tether.store.state import ChatMessage


def _observations(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.content or "{}") for m in messages if m.role == "tool"]


def _money(cents: int) -> str:
    return f"${cents / 100:.2f}"


def support_desk_script(messages: list[ChatMessage]) -> ModelResponse:
    # A run on a thread starts with its earlier turns, between system notes: the
    # request is the first user message after the last system message.
    start = max(i for i, m in enumerate(messages) if m.role == "system")
    goal = next(m.content or "" for m in messages[start:] if m.role == "user")
    seen = _observations(messages[start:])
    last = seen[-1] if seen else {}
    # With no customer id on the event, remember is refused: carry on without memory.
    forgot = "'remember'" in str(last.get("error"))
    if "error" in last and len(seen) >= 3 and not forgot:
        return text(f"I could not complete this: {last['error']}")

    if "last order" in goal.lower():
        return _last_order(seen)

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

    if "refund" in goal.lower() and not email:
        # Which order? Ambiguous: the model asks a human (ask_human) instead of guessing.
        answered = next((o for o in seen if "answered_by" in o), None)
        if answered is None:
            return tool_call(
                "ask_human",
                {
                    "question": "The customer wants a refund but names no order: which order, "
                    "and should it be refunded?",
                    "context": goal[:200],
                },
            )
        return text(
            f"I checked with {answered['answered_by']}: {answered['answer']} "
            "I have told the customer what happens next."
        )

    if email:
        if not seen:
            return tool_call("find_customer", {"email": email.group(0)})
        result = last.get("result")
        if isinstance(result, dict) and "customer_id" in result:
            return tool_call("orders_of_customer", {"customer_id": result["customer_id"]})
        orders = next((o["result"] for o in seen if isinstance(o.get("result"), list)), None)
        if isinstance(result, list) and result:
            # Long-term memory: note the newest order for the customer's next task.
            newest = max(result, key=lambda o: o["order_id"])
            return tool_call("remember", {"key": "last_order", "value": str(newest["order_id"])})
        if isinstance(orders, list):
            listing = "; ".join(f"#{o['order_id']} {o['item']} ({o['status']})" for o in orders)
            noted = " I noted your last order for next time." if not forgot else ""
            return text(f"You have {len(orders)} orders: {listing}.{noted}")
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


def _last_order(seen: list[dict[str, Any]]) -> ModelResponse:
    """ "My last order": what memory recalls of this customer, then the order itself."""
    if not seen:
        return tool_call("recall", {"query": "last_order"})
    recalled = seen[0].get("result")
    if not isinstance(recalled, list) or not recalled:
        return text(
            "I have no record of your last order yet: give me your email or the order number."
        )
    order_id = int(recalled[-1]["value"])
    if len(seen) == 1:
        return tool_call("lookup_order", {"order_id": order_id})
    result = seen[-1].get("result")
    if not isinstance(result, dict):
        return text(f"I could not look up your last order {order_id}: {seen[-1].get('error')}")
    tracking = f", tracking {result['tracking']}" if result.get("tracking") else ""
    return text(
        f"Your last order, {order_id} ({result['item']}), is {result['status']}{tracking}. "
        "(I remembered it from your earlier request.)"
    )
