"""The usage ledger: every request's record in a database (SQLite or PostgreSQL), its cost at
the configured prices, the budgets that read it, and the queries that report it."""

from __future__ import annotations

from aiproxy.usage.budgets import Budgets
from aiproxy.usage.ledger import Ledger, is_usage
from aiproxy.usage.prices import DEFAULT_PRICES, PriceBook, cost_of, default_price
from aiproxy.usage.store import StoreUnavailable, UsageStore, make_store

__all__ = ["DEFAULT_PRICES", "Budgets", "Ledger", "PriceBook", "StoreUnavailable",
           "UsageStore", "cost_of", "default_price", "is_usage", "make_store"]
