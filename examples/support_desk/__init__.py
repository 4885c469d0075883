"""A support desk agent over a SQLite database: lookups, and refunds that need approval."""
