"""The usage ledger: an observer that turns each settled request into one database row.

Nothing here runs on a request's path but :meth:`Ledger.observe`, which prices the record and
appends a row to a bounded buffer. One writer task drains the buffer in batches (every
``USAGE_FLUSH_INTERVAL``, or sooner when a batch is full), one transaction a batch. A database
that is down or slow is logged and counted; the rows wait in the buffer (past its bound, new
rows are dropped and counted) and go out when it is back; shutdown flushes what is left.
A write whose answer was lost (the database died after COMMIT went out) is sent again as it
was, under its id, and the database applies it once (:class:`~aiproxy.usage.store.Write`).

Budget counters (spend and tokens per key, model, and key on a model, per UTC day and month)
ride along in each batch, aggregated, so they are never dropped. A counter that a configured
budget reads is charged at once instead, so that the next admission, on any replica, sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from aiproxy.config import Config
from aiproxy.config.schema import BudgetConfig
from aiproxy.metrics import Metrics
from aiproxy.observability import get_logger
from aiproxy.record import Record
from aiproxy.usage.prices import PriceBook
from aiproxy.usage.store import WRITES_KEPT, Cell, Row, StoreUnavailable, UsageStore, Write
from aiproxy.usage.store import add_cells as _add

__all__ = ["BATCH", "Ledger", "is_usage", "latency_bin", "latency_of_bin", "periods"]

log = get_logger("aiproxy.usage")

BATCH = 1000  # rows a transaction
WRITE_TIMEOUT = 15.0  # a write slower than this counts as failed (and is retried)
CHARGE_TIMEOUT = 2.0
# Budget charges in doubt (sent, then failed) held apart to be resent under their ids; past
# this many (a database that hangs for minutes), they join the batches' counters instead.
UNSURE_MAX = 10_000
MAX_BACKOFF = 30.0
WARN_EVERY = 10.0  # seconds between two "database away" warnings
PURGE_EVERY = 3600.0
REQUESTED_MAX = 256  # a client-chosen model name is stored cut to this
# Latency in log-scale bins 10% wide: percentiles from counts per bin, in any SQL dialect.
_BIN_BASE = math.log(1.1)
# What is not usage: operator and public endpoints, unknown paths, unauthenticated requests.
_NOT_USAGE = frozenset({"/ping", "/health/ready", "/metrics", "/openapi.json", "unmatched"})


def is_usage(record: Record) -> bool:
    route = record.route
    return not (route in _NOT_USAGE or route.startswith(("/admin/", "/dashboard"))
                or record.status == 401)


def latency_bin(ms: float) -> int:
    return int(math.log1p(max(ms, 0.0)) / _BIN_BASE)


def latency_of_bin(b: int) -> float:
    """The middle of a bin, in milliseconds."""
    return (math.exp(b * _BIN_BASE) + math.exp((b + 1) * _BIN_BASE)) / 2 - 1


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month ``now`` falls in: ``("d:2025-06-01", "m:2025-06")``."""
    t = time.gmtime(now)
    return f"d:{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"m:{t.tm_year:04d}-{t.tm_mon:02d}"


def resets_at(now: float) -> float:
    """When the UTC day of ``now`` ends (epoch seconds)."""
    return (now // 86400.0 + 1) * 86400.0


def _scopes(record: Record) -> list[str]:
    scopes = []
    if record.key_name is not None:
        scopes.append(f"key:{record.key_name}")
    if record.model is not None:
        scopes.append(f"model:{record.model}")
        if record.key_name is not None:
            scopes.append(f"key:{record.key_name}/model:{record.model}")
    return scopes


class _Budgeted:
    """Which counters a config's budgets read, looked up once per config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.scopes: set[str] = set()
        for model in config.models:
            if not model.budget.unlimited:
                self.scopes.add(f"model:{model.name}")
        for key in config.keys:
            if not key.budget.unlimited:
                self.scopes.add(f"key:{key.name}")
            for name, budget in key.model_budgets.items():
                if not budget.unlimited:
                    self.scopes.add(f"key:{key.name}/model:{name}")


def _frozen(cells: Mapping[Cell, list[float]]) -> dict[Cell, tuple[float, int]]:
    return {cell: (v[0], int(v[1])) for cell, v in cells.items()}


class Ledger:
    """The usage observer, its buffer and its writer. ``current`` gives the live config (for
    prices and budgets); ``start``/``close`` are the app's lifecycle."""

    def __init__(self, store: UsageStore, metrics: Metrics, current: Callable[[], Config | None],
                 *, buffer: int = 100_000, flush_interval: float = 1.0,
                 retention_days: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.current = current
        self.buffer = buffer
        self.flush_interval = max(flush_interval, 0.01)
        self.retention_days = retention_days
        self.clock = clock
        # Rows not yet written, oldest first (a list: batches are taken and dropped as slices).
        self.rows: list[Row] = []
        self.open = False  # the store is connected and migrated
        self.last_error: str | None = None
        self.written = 0
        self.dropped = 0
        self._cells: dict[Cell, list[float]] = {}  # counters not yet written
        self._writing: dict[Cell, list[float]] = {}  # counters of the writes in flight
        # The writes of the transaction under way, or that failed and will be sent again as
        # they are (same ids: what may have landed lands once), and the rows they hold.
        self._inflight: list[Write] = []
        self._inflight_rows = 0
        # Budget charges that failed after they went out: they may have landed, so they go
        # again under their own ids, with the next batch; and their counters meanwhile.
        self._unsure: list[Write] = []
        self._unsure_cells: dict[Cell, list[float]] = {}
        self._id_prefix = os.urandom(8).hex() + "-"  # this ledger's, for the ids of its writes
        self._writes_made = 0
        self._charging: dict[Cell, list[float]] = {}  # immediate charges under way
        self._pending: dict[int, tuple[Record, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._prices: PriceBook | None = None
        self._budgeted: _Budgeted | None = None
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._warned = 0.0
        self._purged = 0.0
        self._periods = ("", "")
        # Per (key, model): its scopes that a budget reads (charged at once) and the others.
        self._split: dict[tuple[str | None, str | None],
                          tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._split_for: _Budgeted | None = None  # the budgets ``_split`` was made for
        # Not yet written, of the other scopes: (scopes, day, month) -> [cost, tokens].
        self._later: dict[tuple[tuple[str, ...], str, str], list[float]] = {}
        self._periods_until = 0.0

    # --- on the request's path: price, count, queue (no I/O) ---------------------------

    def cost(self, record: Record, config: Config | None = None) -> float | None:
        """USD for ``record`` at the prices of ``config``, by default the live one's
        (``None``: unpriced)."""
        if config is None:
            config = self.current()
            if config is None:
                return None
        book = self._prices
        if book is None or book.config is not config:
            book = self._prices = PriceBook(config)
        return book.cost(record)

    def observe(self, record: Record) -> None:
        if not is_usage(record):
            return
        config = self.current()  # once: prices and budgets of the same config
        cost = record.cost_usd = self.cost(record, config) if config is not None else None
        if cost:
            self.metrics.cost.labels(record.model or "", record.key_name or "").inc(cost)
        tokens = (record.tokens_in or 0) + (record.tokens_out or 0)
        if cost or tokens:
            self._count(record, cost or 0.0, tokens, config)
        if len(self.rows) >= self.buffer:
            self.dropped += 1
            self.metrics.usage_dropped.inc()
        else:
            self.rows.append(self._row(record, cost))
            self.metrics.usage_queued.inc()
            if len(self.rows) >= BATCH:
                self._wake.set()

    def _count(self, record: Record, cost: float, tokens: int, config: Config | None) -> None:
        budgeted = self._budgets(config)
        now = self.clock()
        if now >= self._periods_until:  # once a day: the UTC day and month of now
            self._periods = periods(now)
            self._periods_until = resets_at(now)
        day, month = self._periods
        if budgeted is not self._split_for:  # another config: its budgets split anew
            self._split_for, self._split = budgeted, {}
        subject = (record.key_name, record.model)
        split = self._split.get(subject)
        if split is None:  # names from the config: a bounded set, split once each
            charged = budgeted.scopes if budgeted is not None else set()
            scopes = _scopes(record)
            split = self._split[subject] = (tuple(s for s in scopes if s in charged),
                                            tuple(s for s in scopes if s not in charged))
        now_scopes, later_scopes = split
        if later_scopes:
            # Summed per subject and period, spread to its counters as they are written
            # (:meth:`_spread`): one sum a request instead of two counters a scope.
            at = (later_scopes, day, month)
            have = self._later.get(at)
            if have is None:
                self._later[at] = [cost, tokens]
            else:
                have[0] += cost
                have[1] += tokens
        if not now_scopes:
            return
        charge: dict[Cell, tuple[float, int]] = {}
        for scope in now_scopes:
            charge[(scope, day)] = charge[(scope, month)] = (cost, tokens)
        _add(self._charging, charge.items())
        task = asyncio.get_running_loop().create_task(self._charge(charge))
        key = id(record)
        self._pending[key] = (record, task)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._charged(t, key))

    def _spread(self) -> None:
        """Move the sums of :meth:`_count` to the counters they add to (``_cells``)."""
        later, self._later = self._later, {}
        for (scopes, day, month), (cost, tokens) in later.items():
            _add(self._cells, (((scope, period), (cost, int(tokens)))
                               for scope in scopes for period in (day, month)))

    def _charged(self, task: asyncio.Task[None], key: int) -> None:
        self._tasks.discard(task)
        held = self._pending.get(key)
        if held is not None and held[1] is task:
            del self._pending[key]

    @staticmethod
    def _row(record: Record, cost: float | None) -> Row:
        requested = record.requested
        if requested is not None and len(requested) > REQUESTED_MAX:
            requested = requested[:REQUESTED_MAX]
        return (record.started or time.time(), record.request_id, record.key_name, record.route,
                requested, record.model, record.provider, record.status, record.error_kind,
                record.stream, record.stream_error, record.tokens_in, record.tokens_out,
                record.tokens_cached, record.tokens_reasoning, record.ttft_ms, record.total_ms,
                record.upstream_ms, latency_bin(record.total_ms), record.attempts,
                record.hedges, record.continuations,
                orjson.dumps(record.tried).decode() if record.tried else None, cost)

    # --- budgets: charges that must land before the next admission ----------------------

    def _new_write(self, rows: list[Row], cells: dict[Cell, tuple[float, int]]) -> Write:
        self._writes_made += 1
        return Write(f"{self._id_prefix}{self._writes_made}", self.clock(), rows, cells)

    async def _charge(self, cells: dict[Cell, tuple[float, int]]) -> None:
        write = self._new_write([], cells)
        try:
            if not self.open:
                raise StoreUnavailable(self.last_error or "the usage database is not open")
            async with asyncio.timeout(CHARGE_TIMEOUT):
                await self.store.charge(write)
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the request goes on
            # The writer retries it with the next batch; admissions here see it meanwhile.
            if write.sent and len(self._unsure) < UNSURE_MAX:
                # It may have landed: it goes again as it is, to land once.
                self._unsure.append(write)
                _add(self._unsure_cells, cells.items())
            else:
                # It did not land, or a database that hangs has left too many in doubt to
                # hold each apart: its counters join the next batch's (in doubt, they may
                # count twice: budgets err towards refusing).
                if write.sent:
                    self.metrics.usage_errors.labels("charge_in_doubt").inc()
                _add(self._cells, cells.items())
            self._failed("charge", exc)
        finally:
            _add(self._charging, ((c, (-v[0], -v[1])) for c, v in cells.items()))

    def charges_budgets(self) -> bool:
        """Whether the live config has a budget: then each request's charge starts as it is
        observed, and a plain answer waits for it (:meth:`charged`)."""
        budgeted = self._budgets()
        return budgeted is not None and bool(budgeted.scopes)

    def _budgets(self, config: Config | None = None) -> _Budgeted | None:
        """The budgeted counters of ``config`` (by default the live one), looked up once per
        config."""
        if config is None:
            config = self.current()
        budgeted = self._budgeted
        if config is not None and (budgeted is None or budgeted.config is not config):
            budgeted = self._budgeted = _Budgeted(config)
        return budgeted if config is not None else None

    def owes(self, record: Record) -> bool:
        """Whether a budget charge of ``record`` may be under way (see :meth:`charged`)."""
        return id(record) in self._pending

    async def charged(self, record: Record, wait: float = 1.0) -> None:
        """Wait (up to ``wait`` seconds) until the budget charge of ``record`` has landed, so
        an answer leaves only once its spend is visible to every replica."""
        held = self._pending.pop(id(record), None)
        if held is not None and held[0] is record:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(held[1]), wait)

    async def spent(self, cells: list[Cell]) -> dict[Cell, tuple[float, int]]:
        """What each counter holds: the database's value plus what this process has charged
        and not yet written. With the database away: this process's own view (counted)."""
        found: dict[Cell, tuple[float, int]] = {}
        self._spread()
        if self.open:
            try:
                async with asyncio.timeout(CHARGE_TIMEOUT):
                    found = await self.store.spent(cells)
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the request goes on
                self._failed("read", exc)
        totals: dict[Cell, list[float]] = {c: [v[0], v[1]] for c, v in found.items()}
        for local in (self._cells, self._writing, self._charging, self._unsure_cells):
            _add(totals, ((c, (local[c][0], int(local[c][1]))) for c in cells if c in local))
        return _frozen(totals)

    # --- the writer -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (a failure is logged; the writer keeps trying) and start the
        writer."""
        await self._open()
        self._writer = asyncio.get_running_loop().create_task(self._run())

    async def _open(self) -> bool:
        if self.open:
            return True
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.store.open()
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the request goes on
            self._failed("open", exc)
            return False
        self.open = True
        if self.last_error is not None:
            log.info("usage_store_back", store=self.store.location, queued=len(self.rows))
        else:
            log.info("usage_store_open", store=self.store.location, dialect=self.store.dialect)
        self.last_error = None
        return True

    async def _run(self) -> None:
        delay = self.flush_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if await self.flush():
                delay = self.flush_interval
                await self._purge()
            else:
                delay = min(MAX_BACKOFF, max(delay * 2, 1.0))

    async def flush(self) -> bool:
        """Write what is buffered, batch after batch; False when the database failed."""
        async with self._flush_lock:  # a batch is taken from the buffer's head once
            return await self._flush()

    async def flush_soon(self, wait: float = 2.0) -> None:
        """Write what this process holds before a read (``/admin/usage``, the dashboard), so
        what it answers includes the requests that just ended; a failure is already counted."""
        if self._unwritten() and self.open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.flush()

    def _unwritten(self) -> bool:
        return bool(self.rows or self._cells or self._later or self._inflight or self._unsure)

    async def _flush(self) -> bool:
        while True:
            if not await self._open():
                return False
            writes = self._inflight
            again = bool(writes)
            if not again:  # a new transaction: the next batch, and the charges to resend
                batch = self.rows[:BATCH]
                self._spread()
                cells, self._cells = self._cells, {}
                writes, self._unsure = self._unsure, []
                if not batch and not cells and not writes:
                    return True
                if batch or cells:
                    writes.insert(0, self._new_write(batch, _frozen(cells)))
                _add(cells, ((c, (v[0], int(v[1]))) for c, v in self._unsure_cells.items()))
                self._unsure_cells = {}
                self._writing = cells
                self._inflight, self._inflight_rows = writes, len(batch)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.store.write(writes)
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the request goes on
                # Kept as they are, to be sent again: if this one landed after all, the ids
                # make the next one a no-op.
                self._failed("write", exc)
                return False
            written = self._inflight_rows
            self._inflight, self._inflight_rows, self._writing = [], 0, {}
            del self.rows[:written]  # what came in meanwhile stays, after it
            self.written += written
            self.metrics.usage_written.inc(written)
            self.metrics.usage_queued.dec(written)
            if self.last_error is not None:
                log.info("usage_store_back", store=self.store.location, queued=len(self.rows))
                self.last_error = None
            if not again and written < BATCH:
                return True

    async def _purge(self) -> None:
        if self.clock() - self._purged < PURGE_EVERY:
            return
        self._purged = now = self.clock()
        try:
            if not self.retention_days:
                await self.store.purge(now - WRITES_KEPT)
                return
            before = now - self.retention_days * 86400.0
            day, _ = periods(before)
            _, month = periods(now - 62 * 86400.0)  # month counters: this one and the last
            await self.store.purge(now - WRITES_KEPT, before, day, month)
        except Exception as exc:  # noqa: BLE001 - purging waits for the next hour
            self._failed("purge", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, StoreUnavailable | TimeoutError):
            reason = f"{type(exc).__name__}: {reason}"  # a driver error no backend mapped
        if isinstance(exc, TimeoutError):
            reason = f"the usage database did not answer in time ({operation})"
            if operation in ("open", "write"):
                # A connection stuck mid-transaction: start afresh on the next try.
                self.open = False
        elif operation == "open" or "not open" in reason:
            self.open = False
        self.metrics.usage_errors.labels(operation).inc()
        self.last_error = reason
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("usage_store_unavailable", operation=operation, error=reason,
                        queued=len(self.rows), dropped=self.dropped)

    async def close(self, deadline: float = 10.0) -> None:
        """Flush everything (for up to ``deadline`` seconds), then close the database."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._writer, deadline)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CHARGE_TIMEOUT)
        ends = time.monotonic() + deadline
        while self._unwritten() and time.monotonic() < ends:
            if await self.flush():
                break
            await asyncio.sleep(0.2)
        if self.rows:
            lost = len(self.rows)
            self.dropped += lost
            self.metrics.usage_dropped.inc(lost)
            self.metrics.usage_queued.dec(lost)
            log.error("usage_records_lost", count=lost, error=self.last_error)
            self.rows.clear()
        self._inflight, self._inflight_rows, self._unsure = [], 0, []
        await self.store.close()
        self.open = False

    def status(self) -> dict[str, Any]:
        """For the dashboard: where the ledger writes and how that goes."""
        return {"store": self.store.dialect, "location": self.store.location,
                "open": self.open, "queued": len(self.rows), "written": self.written,
                "dropped": self.dropped, "error": self.last_error}


def budget_cells(scope: str, budget: BudgetConfig, day: str, month: str) -> list[Cell]:
    """The counters a budget reads."""
    cells = []
    if budget.daily or budget.daily_tokens:
        cells.append((scope, day))
    if budget.monthly or budget.monthly_tokens:
        cells.append((scope, month))
    return cells
