"""The shared ledger for replicas: PostgreSQL (``DATABASE_URL=postgresql://...``) via asyncpg.

Every replica writes to the same tables; budget counters are one atomic upsert per charge, so
what one replica charged is what the next admission anywhere reads. Migrations run under an
advisory lock, so replicas starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from aiproxy.usage.store import (
    CLAIM_WRITE,
    INSERT_ROW,
    MIGRATIONS,
    PURGE_CELLS,
    PURGE_RECORDS,
    PURGE_WRITES,
    UPSERT_CELL,
    Cell,
    StoreUnavailable,
    UsageStore,
    Write,
    add_cells,
)

__all__ = ["PostgresStore"]

# What a database that is down, restarting or refusing us raises.
_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_LOCK_ID = 0x61697078  # "aipx": the advisory lock migrations take


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our SQL has no literal ``?``)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        out.append(f"${i}{part}")
    return "".join(out)


_INSERT_ROW = numbered(INSERT_ROW)
_UPSERT_CELL = numbered(UPSERT_CELL)
_CLAIM_WRITE = numbered(CLAIM_WRITE)
_PURGE_WRITES = numbered(PURGE_WRITES)
_PURGE_RECORDS = numbered(PURGE_RECORDS)
_PURGE_CELLS = numbered(PURGE_CELLS)
# A charge in one statement (one round trip, atomic by itself): its id claimed, and its cells
# added only if the claim inserted a row. A data-modifying WITH runs once, before the outer
# statement reads what it returned (PostgreSQL docs, "Data-Modifying Statements in WITH").
# In key order, so two replicas' charges lock the counters alike.
_CHARGE = ("WITH claimed AS (INSERT INTO usage_writes (id, ts) VALUES ($1, $2) "
           "ON CONFLICT (id) DO NOTHING RETURNING id) "
           "INSERT INTO budget_spend (scope, period, cost, tokens) "
           "SELECT s, p, c, t FROM unnest($3::text[], $4::text[], $5::float8[], $6::bigint[]) "
           "AS x(s, p, c, t) WHERE EXISTS (SELECT 1 FROM claimed) ORDER BY s, p "
           "ON CONFLICT (scope, period) DO UPDATE SET cost = budget_spend.cost + "
           "excluded.cost, tokens = budget_spend.tokens + excluded.tokens")
_SPENT = ("SELECT scope, period, cost, tokens FROM budget_spend WHERE (scope, period) IN "
          "(SELECT * FROM unnest($1::text[], $2::text[]))")


class PostgresStore(UsageStore):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 10.0) -> None:
        self.url = url
        parts = urlsplit(url)
        self.location = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        await self.close()  # opening again first closes the pool that is open
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, timeout=self.timeout,
                command_timeout=self.timeout)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
                await conn.execute("CREATE TABLE IF NOT EXISTS aiproxy_schema_migrations "
                                   "(version INTEGER PRIMARY KEY, "
                                   "applied_at DOUBLE PRECISION NOT NULL)")
                applied = {r[0] for r in await conn.fetch(
                    "SELECT version FROM aiproxy_schema_migrations")}
                for version, statements in MIGRATIONS:
                    if version in applied:
                        continue
                    for statement in statements:
                        await conn.execute(statement.format(serial="BIGSERIAL PRIMARY KEY",
                                                            real="DOUBLE PRECISION"))
                    await conn.execute("INSERT INTO aiproxy_schema_migrations VALUES ($1, $2)",
                                       version, time.time())
        except _FAILURES as exc:
            await self.close()
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the usage database is not open")
        return self._pool

    async def write(self, writes: Sequence[Write]) -> None:
        try:
            async with self._get_pool().acquire() as conn, conn.transaction():
                cells: dict[Cell, list[float]] = {}
                for write in writes:
                    if await conn.execute(_CLAIM_WRITE, write.id, write.ts) != "INSERT 0 1":
                        continue  # applied before: its answer was lost, not the write
                    if write.rows:
                        await conn.executemany(_INSERT_ROW, write.rows)
                    add_cells(cells, write.cells.items())
                if cells:
                    # In key order, so two replicas' transactions lock the rows alike.
                    await conn.executemany(_UPSERT_CELL, [(s, p, float(c), int(t)) for (s, p), (
                        c, t) in sorted(cells.items())])
                for write in writes:
                    write.sent = True  # all that is left is the COMMIT
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None

    async def charge(self, write: Write) -> None:
        cells = write.cells
        try:
            async with self._get_pool().acquire() as conn:
                write.sent = True
                await conn.execute(_CHARGE, write.id, write.ts, [c[0] for c in cells],
                                   [c[1] for c in cells], [float(v[0]) for v in cells.values()],
                                   [int(v[1]) for v in cells.values()])
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None

    async def execute(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        try:
            async with self._get_pool().acquire() as conn, conn.transaction():
                for sql, rows in steps:
                    if len(rows) == 1:
                        await conn.execute(numbered(sql), *rows[0])
                    elif rows:
                        await conn.executemany(numbered(sql), rows)
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None

    async def spent(self, cells: Sequence[Cell]) -> dict[Cell, tuple[float, int]]:
        if not cells:
            return {}
        try:
            rows = await self._get_pool().fetch(_SPENT, [c[0] for c in cells],
                                                [c[1] for c in cells])
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None
        return {(r[0], r[1]): (float(r[2]), int(r[3])) for r in rows}

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        try:
            rows = await self._get_pool().fetch(numbered(sql), *params)
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None
        return [tuple(r) for r in rows]

    async def purge(self, writes_before: float, before: float | None = None, day: str = "",
                    month: str = "") -> None:
        try:
            async with self._get_pool().acquire() as conn:
                await conn.execute(_PURGE_WRITES, writes_before)
                if before is not None:
                    await conn.execute(_PURGE_RECORDS, before)
                    await conn.execute(_PURGE_CELLS, day, month)
        except _FAILURES as exc:
            raise StoreUnavailable(f"postgresql {self.location}: {_reason(exc)}") from None

    def bucket(self, seconds_param: str) -> str:
        return f"(floor(ts / {seconds_param}) * {seconds_param})"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()  # waits for connections in use to be given back
            except _FAILURES:
                pool.terminate()


def _reason(exc: BaseException) -> str:
    # asyncpg's messages name the server and the failure, never the password.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
