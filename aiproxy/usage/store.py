"""Where usage records, budget counters and stored responses live: one interface, SQLite and
PostgreSQL behind it.

The schema is versioned: each backend applies the migrations it has not applied yet, in order,
at start-up, under a lock so that replicas starting together migrate once.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "MIGRATIONS", "WRITES_KEPT", "Cell", "Row", "StoreUnavailable",
           "UsageStore", "Write", "add_cells", "make_store"]

# One usage record, in COLUMNS order.
Row = tuple[Any, ...]
# A budget counter: (scope, period), e.g. ("key:team-a", "d:2025-06-01").
Cell = tuple[str, str]

COLUMNS = ("ts", "request_id", "key_name", "route", "requested", "model", "provider", "status",
           "error_kind", "stream", "stream_error", "tokens_in", "tokens_out", "tokens_cached",
           "tokens_reasoning", "ttft_ms", "total_ms", "upstream_ms", "latency_bin", "attempts",
           "hedges", "continuations", "tried", "cost")


def add_cells(into: dict[Cell, list[float]],
              cells: Iterable[tuple[Cell, tuple[float, int]]]) -> None:
    """Add counter amounts, ``(cell, (cost, tokens))`` pairs, to ``into``."""
    for cell, (cost, tokens) in cells:
        have = into.get(cell)
        if have is None:
            into[cell] = [cost, tokens]
        else:
            have[0] += cost
            have[1] += tokens


# How long a write's id is kept (see :class:`Write`): a write sent again later than this, after
# a commit whose answer was lost, could count twice.
WRITES_KEPT = 86400.0


class Write:
    """One of the ledger's transactions: records and counter additions, applied at most once
    however often it is sent. The backend records ``id`` in the same transaction, and skips a
    write whose id it has already recorded.

    Sending it again is the only safe answer to a failure the sender cannot read: a
    connection cut, or a timeout, after COMMIT went out leaves it unknown whether the
    transaction landed (an outage that killed the database mid-answer wrote a batch twice).
    ``sent`` tells the two apart: the backend sets it just before it sends COMMIT (or the
    one statement that is the whole write), so a failure while it is False landed nothing.
    """

    __slots__ = ("cells", "id", "rows", "sent", "ts")

    def __init__(self, id: str, ts: float, rows: Sequence[Row] = (),
                 cells: Mapping[Cell, tuple[float, int]] | None = None) -> None:
        self.id = id
        self.ts = ts  # when it was made (the ids are forgotten WRITES_KEPT after)
        self.rows = rows
        self.cells: Mapping[Cell, tuple[float, int]] = cells or {}
        self.sent = False


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
    # The ids of the ledger's writes (see Write): a write sent again after a lost answer
    # finds its id here and is skipped.
    (3, (
        "CREATE TABLE usage_writes (id TEXT PRIMARY KEY, ts {real} NOT NULL)",
        "CREATE INDEX usage_writes_ts ON usage_writes (ts)",
    )),
)

INSERT_ROW = (f"INSERT INTO usage_records ({', '.join(COLUMNS)}) "  # noqa: S608 - constants
              f"VALUES ({', '.join('?' for _ in COLUMNS)})")
UPSERT_CELL = ("INSERT INTO budget_spend (scope, period, cost, tokens) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (scope, period) DO UPDATE SET cost = budget_spend.cost + "
               "excluded.cost, tokens = budget_spend.tokens + excluded.tokens")

# No row inserted: the write was applied before.
CLAIM_WRITE = "INSERT INTO usage_writes (id, ts) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
PURGE_WRITES = "DELETE FROM usage_writes WHERE ts < ?"
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
    async def write(self, writes: Sequence[Write]) -> None:
        """Apply each write whose id is not recorded yet (insert its rows, add its cells to the
        budget counters) and record its id, all in one transaction; set each one's ``sent``
        just before the commit goes out."""

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
    async def purge(self, writes_before: float, before: float | None = None, day: str = "",
                    month: str = "") -> None:
        """Forget the ids of writes made before ``writes_before``; with ``before``, also delete
        records older than it, and counters of periods before ``day`` (``d:YYYY-MM-DD``) and
        ``month`` (``m:YYYY-MM``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def bucket(self, seconds_param: str) -> str:
        """An SQL expression: ``ts`` floored to a multiple of the parameter."""

    async def charge(self, write: Write) -> None:
        """Add a write's cells to the budget counters now (a budgeted request, outside the
        batches), once, as :meth:`write` does."""
        await self.write((write,))


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
