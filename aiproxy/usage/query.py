"""Reading the ledger: totals and series grouped by key, model, provider, status or route over
a time range; latency percentiles; the last requests. Portable SQL for both backends."""

from __future__ import annotations

import csv
import datetime
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from aiproxy.errors import ProxyError
from aiproxy.usage.ledger import latency_of_bin
from aiproxy.usage.store import UsageStore

__all__ = ["GROUPS", "UsageQuery", "iso", "parse_query", "percentiles", "recent", "summary",
           "to_csv", "traffic", "windows"]

# What a client may group and filter by, and the column behind each (never client SQL).
GROUPS = {"key": "key_name", "model": "model", "provider": "provider", "status": "status",
          "route": "route"}
_SUMS = (
    ("requests", "COUNT(*)"),
    ("errors", "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"),
    ("tokens_in", "COALESCE(SUM(tokens_in), 0)"),
    ("tokens_out", "COALESCE(SUM(tokens_out), 0)"),
    ("tokens_cached", "COALESCE(SUM(tokens_cached), 0)"),
    ("tokens_reasoning", "COALESCE(SUM(tokens_reasoning), 0)"),
    ("cost", "COALESCE(SUM(cost), 0)"),
    # Served requests with no known price: their cost is missing from "cost".
    ("unpriced", "SUM(CASE WHEN cost IS NULL AND model IS NOT NULL THEN 1 ELSE 0 END)"),
)
MAX_BUCKETS = 10_000
MAX_RANGE = 400 * 86400.0


@attrs.frozen
class UsageQuery:
    start: float
    end: float
    bucket: float | None  # seconds; None = totals only
    group_by: tuple[str, ...] = ()
    filters: Mapping[str, str] = attrs.field(factory=dict)


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(text: str, name: str) -> float:
    """``90``, ``15m``, ``1h``, ``7d``."""
    text = text.strip()
    scale = 1.0
    if text[-1:] in ("s", "m", "h", "d"):
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[text[-1]]
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        raise ProxyError(400, f"{name!r} must be a duration such as 90, 15m, 1h or 7d",
                         param=name) from None
    if not math.isfinite(value) or value <= 0:
        raise ProxyError(400, f"{name!r} must be a positive duration", param=name)
    return value


def _time(text: str, name: str) -> float:
    """Epoch seconds, or ISO 8601 (a date, or a time; UTC unless it says otherwise)."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ProxyError(400, f"{name!r} must be ISO 8601 (2025-06-01T12:00:00Z) or "
                             "epoch seconds", param=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise ProxyError(400, f"{name!r} must be a finite time", param=name)
    return value


def parse_query(params: Mapping[str, str], now: float) -> UsageQuery:
    """``start``/``end`` (default: the last ``range``, 24h), ``bucket`` (``none`` for totals
    only; default 1h), ``group_by`` (comma-separated), and filters ``key``, ``model``,
    ``provider``, ``status``."""
    end = _time(params["end"], "end") if params.get("end") else now
    if params.get("start"):
        start = _time(params["start"], "start")
    else:
        start = end - _seconds(params.get("range") or "24h", "range")
    if start >= end:
        raise ProxyError(400, "'start' must be before 'end'", param="start")
    if end - start > MAX_RANGE:
        raise ProxyError(400, "the range may span at most 400 days", param="start")
    raw_bucket = (params.get("bucket") or "1h").strip()
    bucket = None if raw_bucket.lower() in ("none", "0") else _seconds(raw_bucket, "bucket")
    if bucket is not None and (end - start) / bucket > MAX_BUCKETS:
        raise ProxyError(400, f"too many buckets ({int((end - start) / bucket)}; at most "
                         f"{MAX_BUCKETS}): choose a larger 'bucket' or a shorter range",
                         param="bucket")
    group_by: list[str] = []
    for name in (params.get("group_by") or "").split(","):
        name = name.strip()
        if not name:
            continue
        if name not in GROUPS:
            raise ProxyError(400, f"cannot group by {name!r}; choose from "
                             f"{', '.join(GROUPS)}", param="group_by")
        if name not in group_by:
            group_by.append(name)
    filters = {name: params[name] for name in GROUPS if params.get(name)}
    if "status" in filters and not filters["status"].isdigit():
        raise ProxyError(400, "'status' must be an HTTP status code", param="status")
    return UsageQuery(start, end, bucket, tuple(group_by), filters)


def _where(q: UsageQuery) -> tuple[str, list[Any]]:
    clauses = ["ts >= ?", "ts < ?"]
    params: list[Any] = [float(q.start), float(q.end)]
    for name, value in q.filters.items():
        clauses.append(f"{GROUPS[name]} = ?")
        params.append(int(value) if name == "status" else value)
    return " AND ".join(clauses), params


def _row(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if name == "cost":
            value = round(float(value or 0), 10)
        elif name in ("requests", "errors", "unpriced") or name.startswith("tokens_"):
            value = int(value or 0)
        out[name] = value
    return out


async def summary(store: UsageStore, q: UsageQuery) -> dict[str, Any]:
    """Totals per group over the range, the overall total, and per-bucket series."""
    where, params = _where(q)
    cols = [GROUPS[g] for g in q.group_by]
    sums = ", ".join(expr for _, expr in _SUMS)
    names = [*q.group_by, *(n for n, _ in _SUMS)]
    select = ", ".join([*cols, sums])
    group = f" GROUP BY {', '.join(cols)}" if cols else ""
    totals = await store.fetch(
        f"SELECT {select} FROM usage_records WHERE {where}{group}", params)  # noqa: S608 - whitelisted names
    total = await store.fetch(f"SELECT {sums} FROM usage_records WHERE {where}", params)  # noqa: S608
    answer: dict[str, Any] = {
        "start": iso(q.start), "end": iso(q.end), "bucket_seconds": q.bucket,
        "group_by": list(q.group_by), "filters": dict(q.filters),
        "total": _row([n for n, _ in _SUMS], total[0]),
        "totals": sorted((_row(names, r) for r in totals),
                         key=lambda r: (-r["cost"], -r["requests"])),
    }
    if q.bucket is not None:
        bucket = store.bucket("?")
        series = await store.fetch(
            f"SELECT {bucket} AS b, {select} FROM usage_records WHERE {where} "  # noqa: S608
            f"GROUP BY b{''.join(', ' + c for c in cols)} ORDER BY b",
            [float(q.bucket), float(q.bucket), *params])
        answer["series"] = [{"bucket": iso(float(r[0])), **_row(names, r[1:])}
                            for r in series]
    return answer


def to_csv(answer: Mapping[str, Any]) -> str:
    """The series as CSV (one line per bucket and group), or the totals with no bucket."""
    rows = answer.get("series")
    columns = [*answer["group_by"], *(n for n, _ in _SUMS)]
    if rows is not None:
        columns = ["bucket", *columns]
    else:
        rows = answer["totals"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue()


def percentiles(bins: Sequence[tuple[int, int]],
                qs: Sequence[float] = (0.5, 0.95, 0.99)) -> list[float | None]:
    """Percentiles (ms) from ``(bin, count)`` pairs."""
    ordered = sorted(bins)
    total = sum(c for _, c in ordered)
    if not total:
        return [None for _ in qs]
    out: list[float | None] = []
    for q in qs:
        rank, seen = q * total, 0
        for b, count in ordered:
            seen += count
            if seen >= rank:
                out.append(round(latency_of_bin(b), 1))
                break
    return out


async def traffic(store: UsageStore, start: float, end: float, bucket: float,
                  by_model: bool = False) -> list[dict[str, Any]]:
    """Requests, errors and latency percentiles per bucket (or per model, ``by_model``)."""
    head = "model" if by_model else store.bucket("?")
    params: list[Any] = [] if by_model else [float(bucket), float(bucket)]
    rows = await store.fetch(
        f"SELECT {head} AS b, latency_bin, COUNT(*), "  # noqa: S608 - constant expressions
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), COALESCE(SUM(cost), 0), "
        "COALESCE(SUM(tokens_in), 0) + COALESCE(SUM(tokens_out), 0) FROM usage_records "
        "WHERE ts >= ? AND ts < ? GROUP BY b, latency_bin ORDER BY b",
        [*params, float(start), float(end)])
    groups: dict[Any, dict[str, Any]] = {}
    for b, lbin, count, errors, cost, tokens in rows:
        g = groups.setdefault(b, {"bins": [], "requests": 0, "errors": 0, "cost": 0.0,
                                  "tokens": 0})
        g["bins"].append((int(lbin), int(count)))
        g["requests"] += int(count)
        g["errors"] += int(errors or 0)
        g["cost"] += float(cost or 0)
        g["tokens"] += int(tokens or 0)
    out = []
    for b, g in groups.items():
        p50, p95, p99 = percentiles(g.pop("bins"))
        head_value: dict[str, Any] = {"model": b} if by_model else {"t": iso(float(b)),
                                                                    "ts": float(b)}
        out.append({**head_value, **g, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99})
    return out


_RECENT = ("ts", "request_id", "key_name", "route", "requested", "model", "provider",
           "status", "error_kind", "stream", "stream_error", "tokens_in", "tokens_out",
           "tokens_cached", "total_ms", "ttft_ms", "attempts", "tried", "cost")


async def recent(store: UsageStore, limit: int) -> list[dict[str, Any]]:
    """The last requests, newest first (no prompt or answer: the ledger has none)."""
    rows = await store.fetch(
        f"SELECT {', '.join(_RECENT)} FROM usage_records ORDER BY ts DESC, id DESC LIMIT ?",  # noqa: S608
        [int(limit)])
    out = []
    for r in rows:
        item = dict(zip(_RECENT, r, strict=True))
        item["time"] = iso(float(item["ts"]))
        item["stream"] = bool(item["stream"])
        item["tried"] = orjson.loads(item["tried"]) if item["tried"] else []
        item["key"] = item.pop("key_name")
        out.append(item)
    return out


async def windows(store: UsageStore, now: float) -> dict[str, dict[str, int]]:
    """Per model: requests served and tokens in the last minute, hour and day."""
    rows = await store.fetch(
        "SELECT model, SUM(CASE WHEN ts >= ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN ts >= ? THEN 1 ELSE 0 END), COUNT(*), "
        "SUM(CASE WHEN ts >= ? THEN COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) "
        "ELSE 0 END), SUM(COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0)) "
        "FROM usage_records WHERE ts >= ? AND model IS NOT NULL GROUP BY model",
        [now - 60.0, now - 3600.0, now - 60.0, now - 86400.0])
    return {r[0]: {"requests_minute": int(r[1] or 0), "requests_hour": int(r[2] or 0),
                   "requests_day": int(r[3] or 0), "tokens_minute": int(r[4] or 0),
                   "tokens_day": int(r[5] or 0)} for r in rows}
