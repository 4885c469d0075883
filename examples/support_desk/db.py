"""The support desk's SQLite database, created and seeded on first use."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SEED_CUSTOMERS = [
    (1, "Ana Lima", "ana@example.com"),
    (2, "Ben Okafor", "ben@example.com"),
    (3, "Chen Wei", "chen@example.com"),
]
SEED_ORDERS = [
    (1001, 1, "Trail running shoes", 12900, "shipped", "UPS 1Z999AA10123456784"),
    (1002, 1, "Rain jacket", 8900, "delivered", "UPS 1Z999AA10123456785"),
    (1003, 2, "Camping stove", 5400, "processing", None),
    (1004, 3, "Headlamp", 2900, "delivered", "DHL 3941203312"),
    (1005, 2, "Sleeping bag", 15900, "delivered", "DHL 3941203377"),
]


def db_path() -> Path:
    return Path(os.environ.get("SUPPORT_DESK_DB", ".tether/support_desk.sqlite3"))


def connect() -> sqlite3.Connection:
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT UNIQUE);
        CREATE TABLE IF NOT EXISTS orders (
            id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), item TEXT,
            amount_cents INTEGER, status TEXT, tracking TEXT);
        CREATE TABLE IF NOT EXISTS refunds (
            idempotency_key TEXT PRIMARY KEY, order_id INTEGER REFERENCES orders(id),
            amount_cents INTEGER, reason TEXT, created_at TEXT DEFAULT CURRENT_TIMESTAMP);
        """
    )
    conn.executemany("INSERT OR IGNORE INTO customers VALUES (?, ?, ?)", SEED_CUSTOMERS)
    conn.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?)", SEED_ORDERS)
    return conn
