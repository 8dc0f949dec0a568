"""The usage ledger in the application: its lifecycle, the budget charge an answer waits for,
and ``GET /admin/usage`` (totals and series as JSON or CSV; ``AUTH_TOKEN`` only)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from aiproxy.config import Config, Settings
from aiproxy.errors import ProxyError
from aiproxy.http.state import RUNTIME
from aiproxy.metrics import Metrics
from aiproxy.observability import get_logger
from aiproxy.usage.ledger import Ledger
from aiproxy.usage.query import parse_query, summary, to_csv
from aiproxy.usage.store import StoreUnavailable, make_store

__all__ = ["LEDGER", "add_routes", "lifecycle", "make_ledger", "usage"]

LEDGER = web.AppKey("ledger", Ledger)
log = get_logger("aiproxy.usage")
_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def make_ledger(settings: Settings, metrics: Metrics, app: web.Application) -> Ledger:
    """The ledger for ``DATABASE_URL`` (an app built without one keeps it in memory)."""

    def current() -> Config | None:
        generation = app[RUNTIME].current
        return generation.config if generation is not None else None

    return Ledger(make_store(settings.database_url or "sqlite://"), metrics, current,
                  buffer=settings.usage_buffer, flush_interval=settings.usage_flush_interval,
                  retention_days=settings.usage_retention_days)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Open the database (migrating it) at start; flush and close it at cleanup, after the
    last request was observed."""
    ledger = app[LEDGER]
    await ledger.start()
    generation = app[RUNTIME].current
    if (generation is not None and generation.settings.redis_url
            and ledger.store.dialect == "sqlite" and _has_budgets(generation.config)):
        # Redis suggests replicas on several machines: each would keep its own SQLite file.
        log.warning("budgets_per_machine", reason="budgets are configured and REDIS_URL is "
                    "set, but the usage ledger is SQLite: each machine counts its own spend; "
                    "set DATABASE_URL=postgresql://... to share it")
    try:
        yield
    finally:
        await ledger.close()


def _has_budgets(config: Config) -> bool:
    return any(not m.budget.unlimited for m in config.models) or any(
        not k.budget.unlimited or any(not b.unlimited for b in k.model_budgets.values())
        for k in config.keys)


async def usage(request: web.Request) -> web.StreamResponse:
    """``GET /admin/usage``: see ``docs/usage.md`` for the parameters."""
    query = parse_query(request.query, time.time())
    ledger = request.app[LEDGER]
    await ledger.flush_soon()
    try:
        answer = await summary(ledger.store, query)
    except StoreUnavailable as exc:
        raise ProxyError(503, f"the usage database is unavailable: {exc}",
                         code="usage_unavailable", retry_after=5) from None
    wants_csv = request.query.get("format") == "csv" or (
        "format" not in request.query and "text/csv" in request.headers.get("Accept", ""))
    if request.query.get("format") not in (None, "csv", "json"):
        raise ProxyError(400, "'format' must be json or csv", param="format")
    if wants_csv:
        return web.Response(text=to_csv(answer), headers={
            "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="aiproxy-usage.csv"'})
    answer["ledger"] = ledger.status()
    return web.Response(body=orjson.dumps(answer), headers=_JSON)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/usage", usage)
