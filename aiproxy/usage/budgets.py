"""Budgets: an admission guard that refuses a request once a budget it falls under is spent.

A budget caps spend (USD at the configured prices) and tokens per UTC day and calendar month,
for a client key, for a model (all keys together), or for a key on one model. A request is
admitted while what was spent is below every budget it falls under; the request that crosses a
budget runs to its end and is charged in full (a stream that crosses it mid-way finishes:
its cost is only known at its end); every request after it is refused with 429 until the
period resets. A model whose budget is spent is skipped like a rate-limited candidate, so a
group falls over to its other members; a request with no candidate left is refused.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Awaitable, Callable

from aiproxy.config.schema import BudgetConfig
from aiproxy.errors import ProxyError
from aiproxy.keys import Grant
from aiproxy.metrics import Metrics
from aiproxy.record import Record
from aiproxy.routing.plan import Route
from aiproxy.usage.ledger import Ledger, budget_cells, periods
from aiproxy.usage.store import Cell

__all__ = ["Budgets", "resets"]


def resets(now: float) -> tuple[float, float]:
    """When the UTC day and the calendar month of ``now`` end (epoch seconds)."""
    t = time.gmtime(now)
    day_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return day_start + 86400.0, float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class _Check:
    """One budget a request falls under."""

    __slots__ = ("budget", "kind", "label", "route", "scope")

    def __init__(self, scope: str, label: str, kind: str, budget: BudgetConfig,
                 route: Route | None) -> None:
        self.scope, self.label, self.kind = scope, label, kind
        self.budget, self.route = budget, route


class Budgets:
    """The guard (``Runtime(guards=(budgets.guard,))``), reading the ledger's counters."""

    def __init__(self, ledger: Ledger, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock

    def guard(self, record: Record, grant: Grant | None,
              plan: list[Route]) -> Awaitable[None] | None:
        """The budgets the request falls under; ``None`` when there are none (most requests:
        nothing to read, nothing to await), else the check of what they have spent."""
        key = grant.key if grant is not None else None
        checks: list[_Check] = []
        if key is not None and not key.budget.unlimited:
            checks.append(_Check(f"key:{key.name}", f"key {key.name!r}", "key", key.budget,
                                 None))
        for route in plan:
            if not route.model.budget.unlimited:
                checks.append(_Check(f"model:{route.name}", f"model {route.name!r}", "model",
                                     route.model.budget, route))
            if key is None:
                continue
            own = key.model_budgets.get(route.name)
            if own is not None and not own.unlimited:
                checks.append(_Check(f"key:{key.name}/model:{route.name}",
                                     f"key {key.name!r} on model {route.name!r}", "key_model",
                                     own, route))
        if not checks:
            return None
        return self._check(plan, checks)

    async def _check(self, plan: list[Route], checks: list[_Check]) -> None:
        now = self.clock()
        day, month = periods(now)
        cells = sorted({c for check in checks
                        for c in budget_cells(check.scope, check.budget, day, month)})
        spent = await self.ledger.spent(cells)
        ends = resets(now)
        blocked: dict[int, ProxyError] = {}
        for check in checks:
            refusal = self._over(check, spent, day, month, ends, now)
            if refusal is None:
                continue
            if check.route is None:
                self.metrics.budget_refusals.labels(check.kind).inc()
                raise refusal
            blocked.setdefault(id(check.route), refusal)
            self.metrics.budget_refusals.labels(check.kind).inc()
        if not blocked:
            return
        left = [route for route in plan if id(route) not in blocked]
        if not left:
            raise blocked[id(plan[0])]
        plan[:] = left  # the spent models are skipped; the router tries the others

    @staticmethod
    def _over(check: _Check, spent: dict[Cell, tuple[float, int]], day: str, month: str,
              ends: tuple[float, float], now: float) -> ProxyError | None:
        budget = check.budget
        for period, cell, limit_usd, limit_tokens, end in (
                ("daily", (check.scope, day), budget.daily, budget.daily_tokens, ends[0]),
                ("monthly", (check.scope, month), budget.monthly, budget.monthly_tokens,
                 ends[1])):
            cost, tokens = spent.get(cell, (0.0, 0))
            what = None
            if limit_usd and cost >= limit_usd:
                what = f"{period} spend budget of ${limit_usd:g} (spent ${cost:.4f})"
            elif limit_tokens and tokens >= limit_tokens:
                what = f"{period} token budget of {limit_tokens} (used {tokens})"
            if what is None:
                continue
            wait = max(1.0, end - now)
            return ProxyError(
                429, f"budget exceeded for {check.label}: the {what} is used up; it resets at "
                f"{_iso(end)}", code="budget_exceeded", type="insufficient_quota",
                retry_after=wait)
        return None
