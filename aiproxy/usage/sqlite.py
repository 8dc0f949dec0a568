"""The embedded ledger: one SQLite file in WAL mode (readers never wait for the writer), through
aiosqlite so that no query runs on the event loop.

Several processes on one machine (``--workers``) may share the file: writes take SQLite's
write lock (``BEGIN IMMEDIATE``, waiting up to ``busy_timeout``), so budget counters stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from aiproxy.usage.store import (
    CLAIM_WRITE,
    COLUMNS,
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

__all__ = ["SQLiteStore"]

_BUSY_MS = 5000

# sqlite3 binds exact int, float and str directly, but sends every other value (None, bool)
# through its adapter lookup: a registry miss, then two failed attribute lookups whose
# AttributeError messages are formatted and dropped. A usage row holds about eight such values,
# and the misses were half of the ledger's cost per request (callgrind, docs/performance.md).
# Registered adapters are found at the first lookup; these two bind exactly what sqlite3 binds
# without them (NULL, and 0/1), so they change nothing for any other user of sqlite3 here.
_NO_ADAPTATION: dict[None, None] = {}
_as_null: Callable[[None], None] = _NO_ADAPTATION.get  # {}.get(None) is None: C, no frame
sqlite3.register_adapter(type(None), _as_null)
sqlite3.register_adapter(bool, int)


# Rows go in many to an INSERT, not one statement step each (executemany): sqlite3 gives up
# the GIL around every step and takes it back from the event loop's thread, a futex handoff
# (and a wait of up to the switch interval) per row: about one a request under load. One
# statement of many rows steps once. SQLite takes 32,766 parameters a statement since 3.32
# (999 before): 24 columns a row, so 128 rows (3,072) or 32 (768).
# Statements are compiled once and kept by sqlite3's statement cache, so the sizes are few:
# full chunks, then the rest in powers of two.
_ROWS_A_STATEMENT = 128 if sqlite3.sqlite_version_info >= (3, 32) else 32
_ONE_ROW = "(" + ", ".join("?" for _ in COLUMNS) + ")"
_INSERTS: dict[int, str] = {}


def _chunks(n: int) -> list[int]:
    """Statement sizes for ``n`` rows: full chunks, then the rest in falling powers of two."""
    sizes = [_ROWS_A_STATEMENT] * (n // _ROWS_A_STATEMENT)
    size = _ROWS_A_STATEMENT // 2
    rest = n % _ROWS_A_STATEMENT
    while rest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    return sizes


def _insert_rows(n: int) -> str:
    sql = _INSERTS.get(n)
    if sql is None:
        sql = _INSERTS[n] = INSERT_ROW.replace(_ONE_ROW, ", ".join([_ONE_ROW] * n))
    return sql


class SQLiteStore(UsageStore):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.memory = path == ":memory:"
        # An in-memory database is shared by this store's connections under a unique name.
        self.path = f"file:aiproxy-{uuid.uuid4().hex}?mode=memory&cache=shared" \
            if self.memory else path
        self.location = ":memory:" if self.memory else str(Path(path).resolve())
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the writing connection

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, uri=self.memory, isolation_level=None,
                                     timeout=_BUSY_MS / 1000)
        try:
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            # Off by default in SQLite: a stored response's item index goes with it (CASCADE).
            await db.execute("PRAGMA foreign_keys = ON")
            if not self.memory:
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.close()
            raise
        return db

    async def open(self) -> None:
        # Opening again (a second start, a reconnect) first closes what is open: each
        # aiosqlite connection holds a thread that keeps the process from exiting.
        await self.close()
        try:
            if not self.memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = await self._connect()
            async with self._lock:
                await self._migrate(self._db)
            # Dashboard and /admin/usage queries read on their own connection (WAL: they see
            # the last commit and never hold up the writer, nor the budget checks).
            self._reader = self._db if self.memory else await self._connect()
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS aiproxy_schema_migrations "
                             "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            rows = await db.execute_fetchall("SELECT version FROM aiproxy_schema_migrations")
            applied = {int(r[0]) for r in rows}
            for version, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    await db.execute(statement.format(serial="INTEGER PRIMARY KEY",
                                                      real="REAL"))
                await db.execute("INSERT INTO aiproxy_schema_migrations VALUES (?, ?)",
                                 (version, time.time()))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("the usage database is not open")
        return self._db

    async def write(self, writes: Sequence[Write]) -> None:
        db = self._conn()
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    cells: dict[Cell, list[float]] = {}
                    for write in writes:
                        claimed = await db.execute(CLAIM_WRITE, (write.id, write.ts))
                        if claimed.rowcount != 1:
                            continue  # applied before: its answer was lost, not the write
                        rows = write.rows
                        start = 0
                        for size in _chunks(len(rows)):
                            chunk = rows[start:start + size]
                            start += size
                            # Flattened in C (a comprehension is ~5 bytecodes a value, 24 a row).
                            await db.execute(_insert_rows(size),
                                             list(itertools.chain.from_iterable(chunk)))
                        add_cells(cells, write.cells.items())
                    if cells:
                        await db.executemany(UPSERT_CELL, [(s, p, c, int(t)) for (s, p), (c, t)
                                                           in cells.items()])
                    for write in writes:
                        write.sent = True
                    await db.execute("COMMIT")
                except BaseException:
                    # A timeout may cancel us while BEGIN still waits for the lock: then
                    # there is nothing to roll back, and that must not replace the error.
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None

    async def execute(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        db = self._conn()
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, rows in steps:
                        await db.executemany(sql, rows)
                    await db.execute("COMMIT")
                except BaseException:
                    # A timeout may cancel us while BEGIN still waits for the lock: then
                    # there is nothing to roll back, and that must not replace the error.
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None

    async def spent(self, cells: Sequence[Cell]) -> dict[Cell, tuple[float, int]]:
        if not cells:
            return {}
        where = " OR ".join("(scope = ? AND period = ?)" for _ in cells)
        params = [v for cell in cells for v in cell]
        try:
            rows = await self._conn().execute_fetchall(
                f"SELECT scope, period, cost, tokens FROM budget_spend WHERE {where}",  # noqa: S608 - placeholders only
                params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None
        return {(r[0], r[1]): (float(r[2]), int(r[3])) for r in rows}

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the usage database is not open")
        try:
            return list(await reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None

    async def purge(self, writes_before: float, before: float | None = None, day: str = "",
                    month: str = "") -> None:
        db = self._conn()
        async with self._lock:
            try:
                await db.execute(PURGE_WRITES, (writes_before,))
                if before is not None:
                    await db.execute(PURGE_RECORDS, (before,))
                    await db.execute(PURGE_CELLS, (day, month))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.location}: {exc}") from None

    def bucket(self, seconds_param: str) -> str:
        # CAST truncates toward zero, which is the floor for the positive times we store.
        return f"(CAST(ts / {seconds_param} AS INTEGER) * {seconds_param})"

    async def close(self) -> None:
        for db in {id(c): c for c in (self._reader, self._db) if c is not None}.values():
            with contextlib.suppress(sqlite3.Error):
                await db.close()
        self._db = self._reader = None
