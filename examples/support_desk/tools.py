"""The support desk's tools: idempotent lookups, and a refund that needs a human's approval."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from examples.support_desk.db import connect
from tether import ToolContext, tool


class Order(BaseModel):
    order_id: int
    customer_id: int
    item: str
    amount_cents: int
    status: str
    tracking: str | None


class Customer(BaseModel):
    customer_id: int
    name: str
    email: str


class Refund(BaseModel):
    order_id: int
    amount_cents: int
    refund_id: str
    already_refunded: bool


def _order(row: object) -> Order:
    r = dict(row)  # type: ignore[call-overload]
    return Order(
        order_id=r["id"],
        customer_id=r["customer_id"],
        item=r["item"],
        amount_cents=r["amount_cents"],
        status=r["status"],
        tracking=r["tracking"],
    )


@tool(safe_in_shadow=True)  # a read: a shadow candidate may run it for real
def lookup_order(
    order_id: Annotated[int, Field(ge=1, description="The numeric order id, e.g. 1001")],
) -> Order:
    """Look up one order by its id: item, amount, shipping status and tracking number."""
    with connect() as conn:
        row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        raise LookupError(f"order {order_id} does not exist")
    return _order(row)


@tool(safe_in_shadow=True)  # a read: a shadow candidate may run it for real
def find_customer(email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]) -> Customer:
    """Find a customer by email address."""
    with connect() as conn:
        row = conn.execute("SELECT * FROM customers WHERE email = ?", (email.lower(),)).fetchone()
    if row is None:
        raise LookupError(f"no customer has the email {email}")
    return Customer(customer_id=row["id"], name=row["name"], email=row["email"])


@tool(safe_in_shadow=True)  # a read: a shadow candidate may run it for real
def orders_of_customer(customer_id: Annotated[int, Field(ge=1)]) -> list[Order]:
    """All orders of one customer, newest first."""
    with connect() as conn:
        rows = conn.execute(
            "SELECT * FROM orders WHERE customer_id = ? ORDER BY id DESC", (customer_id,)
        ).fetchall()
    return [_order(r) for r in rows]


def _simulated_refund(ctx: ToolContext, order_id: int, amount_cents: int, reason: str) -> Refund:
    """What issue_refund would return, for a shadow run: nothing is written."""
    return Refund(
        order_id=order_id,
        amount_cents=amount_cents,
        refund_id=f"dry-run:{ctx.action_id}",
        already_refunded=False,
    )


@tool(idempotent=False, requires_approval=True, timeout_s=10, dry_run=_simulated_refund)
def issue_refund(
    ctx: ToolContext,
    order_id: Annotated[int, Field(ge=1)],
    amount_cents: Annotated[int, Field(gt=0, le=100_000)],
    reason: Annotated[str, Field(min_length=3, max_length=500)],
) -> Refund:
    """Refund (part of) an order to the customer's original payment method. Needs approval."""
    # The action id is stable across redeliveries: the refund happens at most once.
    with connect() as conn:
        order = conn.execute("SELECT amount_cents FROM orders WHERE id = ?", (order_id,)).fetchone()
        if order is None:
            raise LookupError(f"order {order_id} does not exist")
        if amount_cents > order["amount_cents"]:
            raise ValueError(
                f"refund {amount_cents} exceeds the order total {order['amount_cents']}"
            )
        inserted = conn.execute(
            "INSERT OR IGNORE INTO refunds (idempotency_key, order_id, amount_cents, reason) VALUES (?, ?, ?, ?)",
            (ctx.action_id, order_id, amount_cents, reason),
        ).rowcount
    return Refund(
        order_id=order_id,
        amount_cents=amount_cents,
        refund_id=ctx.action_id,
        already_refunded=not inserted,
    )
