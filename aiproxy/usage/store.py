"""Where usage records, budget counters and stored responses live: one interface, SQLite and
PostgreSQL behind it.

The schema is versioned: each backend applies the migrations it has not applied yet, in order,
at start-up, under a lock so that replicas starting together migrate once.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "MIGRATIONS", "Cell", "Row", "StoreUnavailable", "UsageStore",
           "make_store"]

# One usage record, in COLUMNS order.
Row = tuple[Any, ...]
# A budget counter: (scope, period), e.g. ("key:team-a", "d:2025-06-01").
Cell = tuple[str, str]

COLUMNS = ("ts", "request_id", "key_name", "route", "requested", "model", "provider", "status",
           "error_kind", "stream", "stream_error", "tokens_in", "tokens_out", "tokens_cached",
           "tokens_reasoning", "ttft_ms", "total_ms", "upstream_ms", "latency_bin", "attempts",
           "hedges", "continuations", "tried", "cost")

# Versioned migrations, applied in order and never edited once released: a change to the
# schema is a new entry. {serial} and {real} are filled per dialect.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE usage_records (
            id {serial},
            ts {real} NOT NULL,
            request_id TEXT NOT NULL,
            key_name TEXT,
            route TEXT NOT NULL,
            requested TEXT,
            model TEXT,
            provider TEXT,
            status INTEGER NOT NULL,
            error_kind TEXT,
            stream BOOLEAN NOT NULL,
            stream_error TEXT,
            tokens_in BIGINT,
            tokens_out BIGINT,
            tokens_cached BIGINT,
            tokens_reasoning BIGINT,
            ttft_ms {real},
            total_ms {real} NOT NULL,
            upstream_ms {real},
            latency_bin INTEGER NOT NULL,
            attempts INTEGER,
            hedges INTEGER NOT NULL,
            continuations INTEGER NOT NULL,
            tried TEXT,
            cost {real}
        )""",
        "CREATE INDEX usage_records_ts ON usage_records (ts)",
        "CREATE INDEX usage_records_key_ts ON usage_records (key_name, ts)",
        """CREATE TABLE budget_spend (
            scope TEXT NOT NULL,
            period TEXT NOT NULL,
            cost {real} NOT NULL DEFAULT 0,
            tokens BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, period)
        )""",
    )),
    # Stored Responses API responses (store: true), read back by previous_response_id: see
    # aiproxy/frontdoor/responses/database_store.py. A response is its owner's (the client
    # key), its id, the Response object and its own input items as JSON text; an item index
    # for item_reference goes with its response (ON DELETE CASCADE).
    (2, (
        """CREATE TABLE stored_responses (
            owner TEXT NOT NULL,
            id TEXT NOT NULL,
            previous_id TEXT,
            response TEXT NOT NULL,
            input_items TEXT NOT NULL,
            origin TEXT,
            upstream_stored BOOLEAN NOT NULL,
            size BIGINT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            PRIMARY KEY (owner, id)
        )""",
        "CREATE INDEX stored_responses_expires ON stored_responses (expires_at)",
        """CREATE TABLE stored_response_items (
            owner TEXT NOT NULL,
            item_id TEXT NOT NULL,
            response_id TEXT NOT NULL,
            PRIMARY KEY (owner, item_id),
            FOREIGN KEY (owner, response_id) REFERENCES stored_responses (owner, id)
                ON DELETE CASCADE
        )""",
        "CREATE INDEX stored_response_items_response ON stored_response_items "
        "(owner, response_id)",
    )),
)

INSERT_ROW = (f"INSERT INTO usage_records ({', '.join(COLUMNS)}) "  # noqa: S608 - constants
              f"VALUES ({', '.join('?' for _ in COLUMNS)})")
UPSERT_CELL = ("INSERT INTO budget_spend (scope, period, cost, tokens) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (scope, period) DO UPDATE SET cost = budget_spend.cost + "
               "excluded.cost, tokens = budget_spend.tokens + excluded.tokens")

PURGE_RECORDS = "DELETE FROM usage_records WHERE ts < ?"
# Every "d:..." period sorts before every "m:..." one.
PURGE_CELLS = ("DELETE FROM budget_spend WHERE period < ? "
               "OR (period >= 'm:' AND period < ?)")


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the operation (the message says why)."""


class UsageStore(abc.ABC):
    """A usage database. SQL is written with ``?`` placeholders; a backend adapts them."""

    dialect: str
    location: str  # for logs: a file path, or host/db (never a password)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations; :class:`StoreUnavailable` when it cannot."""

    @abc.abstractmethod
    async def write(self, rows: Sequence[Row], cells: Mapping[Cell, tuple[float, int]]) -> None:
        """Insert ``rows`` and add ``cells`` to the budget counters, in one transaction."""

    @abc.abstractmethod
    async def spent(self, cells: Sequence[Cell]) -> dict[Cell, tuple[float, int]]:
        """The (cost, tokens) of each counter that exists."""

    @abc.abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        """Rows of a read-only query."""

    @abc.abstractmethod
    async def execute(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Run each statement once per parameter row, in order, in one transaction (the
        stored responses' writes)."""

    @abc.abstractmethod
    async def purge(self, before: float, day: str, month: str) -> None:
        """Delete records older than ``before``, and counters of periods before ``day``
        (``d:YYYY-MM-DD``) and ``month`` (``m:YYYY-MM``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def bucket(self, seconds_param: str) -> str:
        """An SQL expression: ``ts`` floored to a multiple of the parameter."""

    async def charge(self, cells: Mapping[Cell, tuple[float, int]]) -> None:
        """Add to the budget counters now (a budgeted request, outside the batches)."""
        await self.write((), cells)


def make_store(url: str) -> UsageStore:
    """The backend for a ``DATABASE_URL`` (``sqlite:///path``, ``postgresql://...``)."""
    if url.startswith(("postgres://", "postgresql://")):
        from aiproxy.usage.postgres import PostgresStore

        return PostgresStore(url)
    from aiproxy.usage.sqlite import SQLiteStore

    # SQLAlchemy's spelling: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// = memory.
    rest = url.removeprefix("sqlite://")
    if not url.startswith("sqlite://") or (rest and not rest.startswith("/")):
        raise ValueError("DATABASE_URL: expected sqlite:///path or postgresql://...")
    return SQLiteStore(rest[1:] or ":memory:" if rest else ":memory:")
