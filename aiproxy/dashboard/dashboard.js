// The dashboard page: reads /dashboard/api/* with the session cookie and redraws itself every
// few seconds. Every value from the server is set as text, never as markup.
"use strict";

(() => {
  const REFRESH = Number(document.body.dataset.refreshMs) || 3000;
  const BUCKETS = { "1h": "1m", "24h": "1h", "7d": "6h", "30d": "1d" };
  let range = "24h";
  let busy = false;

  const $ = (sel) => document.querySelector(sel);
  const usd = (v) => (v == null ? "–" : v >= 1 ? `$${v.toFixed(2)}` : v > 0 ? `$${Number(v.toPrecision(3))}` : "$0");
  const num = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
  const ms = (v) => (v == null ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
  const short = (v) => (v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : `${+v.toFixed(3)}`);

  async function get(path) {
    const resp = await fetch(path, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (resp.status === 401) {
      window.location.assign("/dashboard/login");
      throw new Error("the session ended");
    }
    if (!resp.ok) {
      let message = `${resp.status}`;
      try { message = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return resp.json();
  }

  function cell(tr, value, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    tr.appendChild(td);
    return td;
  }

  function badge(text, cls) {
    const span = document.createElement("span");
    span.className = `badge ${cls}`;
    span.textContent = text;
    return span;
  }

  function fill(tbody, rows, build) {
    tbody.textContent = "";
    for (const row of rows) {
      const tr = document.createElement("tr");
      build(tr, row);
      tbody.appendChild(tr);
    }
  }

  function limitsText(m) {
    const l = m.limits, s = m.seen || {};
    const parts = [];
    if (l.requests_per_minute) parts.push(`rpm ${s.requests_minute || 0}/${l.requests_per_minute}`);
    if (l.requests_per_hour) parts.push(`rph ${s.requests_hour || 0}/${l.requests_per_hour}`);
    if (l.requests_per_day) parts.push(`rpd ${s.requests_day || 0}/${l.requests_per_day}`);
    if (l.tokens_per_minute) parts.push(`tpm ${num(s.tokens_minute || 0)}/${num(l.tokens_per_minute)}`);
    if (l.tokens_per_day) parts.push(`tpd ${num(s.tokens_day || 0)}/${num(l.tokens_per_day)}`);
    return parts.length ? parts.join(" · ") : "none";
  }

  function budgetText(b) {
    if (!b) return "none";
    const parts = [];
    if (b.daily) parts.push(`day ${usd(b.spent_today)} / ${usd(b.daily)}`);
    if (b.monthly) parts.push(`month ${usd(b.spent_month)} / ${usd(b.monthly)}`);
    if (b.daily_tokens) parts.push(`day ${num(b.tokens_today)} / ${num(b.daily_tokens)} tok`);
    if (b.monthly_tokens) parts.push(`month ${num(b.tokens_month)} / ${num(b.monthly_tokens)} tok`);
    return parts.join(" · ");
  }

  function renderOverview(data) {
    fill($("#models tbody"), data.models, (tr, m) => {
      tr.dataset.model = m.name;
      cell(tr, m.name);
      cell(tr, m.provider);
      cell(tr, m.groups.join(", ") || "–");
      cell(tr, badge(m.breaker.replace("_", "-"), m.breaker));
      cell(tr, limitsText(m));
      const r = m.recent;
      const rate = r.error_rate == null ? "" : ` · ${(r.error_rate * 100).toFixed(1)}% errors`;
      cell(tr, r.requests ? `${num(r.requests)} req${rate} · p50 ${ms(r.p50_ms)}` : "idle");
      const p = m.price;
      cell(tr, p ? (p.image ? `${usd(p.image)} / image` : `in ${p.input} · out ${p.output}`) : "unpriced");
      cell(tr, budgetText(m.budget));
    });
    const groups = Object.entries(data.groups).map(([g, ms]) => `${g}: ${ms.join(", ")}`);
    $("#groups").textContent = groups.length ? `Groups — ${groups.join(" · ")}` : "";
    const l = data.ledger;
    $("#ledger").textContent = `ledger: ${l.store} ${l.open ? "ok" : "unavailable"}` +
      (l.queued ? ` · ${l.queued} queued` : "") + (l.dropped ? ` · ${l.dropped} dropped` : "") +
      (l.error ? ` · ${l.error}` : "");
  }

  function minutes(start, series) {
    const xs = [];
    for (let i = 0; i < 60; i++) xs.push(start + i * 60);
    const at = (key) => xs.map((ts) => { const row = series.get(ts); return row ? row[key] : null; });
    return { xs, at };
  }

  function renderTraffic(data) {
    const rows = new Map(data.series.map((r) => [r.ts, r]));
    const { xs, at } = minutes(data.start, rows);
    const rps = at("requests").map((v) => (v == null ? 0 : v / 60));
    Charts.line($("#chart-rps"), xs, [{ name: "requests/s", values: rps }], short);
    Charts.line($("#chart-latency"), xs, [
      { name: "p50", values: at("p50_ms") }, { name: "p95", values: at("p95_ms") },
      { name: "p99", values: at("p99_ms") }], (v) => `${short(v)}`);
    Charts.bars($("#chart-errors"), xs, [{ name: "errors", values: at("errors") }], short);
    const total = data.series.reduce((a, r) => a + r.requests, 0);
    const errors = data.series.reduce((a, r) => a + r.errors, 0);
    const last = rows.get(xs[xs.length - 1]);
    $("#kpi-rps").textContent = last ? (last.requests / 60).toFixed(2) : "0";
    $("#kpi-requests").textContent = num(total);
    $("#kpi-errors").textContent = num(errors);
    $("#kpi-p95").textContent = last ? ms(last.p95_ms) : "–";
  }

  // Pivot /admin/usage series rows into one series per group value, over every bucket.
  function pivot(answer, group, value) {
    const step = answer.bucket_seconds;
    const start = Math.floor(Date.parse(answer.start) / 1000 / step) * step;
    const end = Date.parse(answer.end) / 1000;
    const xs = [];
    for (let t = start; t < end; t += step) xs.push(t);
    const names = new Map();
    for (const row of answer.series) {
      const name = row[group] == null ? (group === "key" ? "(admin token)" : "(none)") : String(row[group]);
      if (!names.has(name)) names.set(name, new Array(xs.length).fill(0));
      const i = Math.round((Date.parse(row.bucket) / 1000 - start) / step);
      if (i >= 0 && i < xs.length) names.get(name)[i] += value(row);
    }
    return { xs, series: [...names].filter(([, values]) => values.some((v) => v > 0))
      .map(([name, values]) => ({ name, values })) };
  }

  function renderUsage(byKey, byModel, totals) {
    const cost = (r) => r.cost, tokens = (r) => r.tokens_in + r.tokens_out;
    let p = pivot(byKey, "key", cost);
    Charts.bars($("#chart-spend-key"), p.xs, p.series, usd);
    p = pivot(byModel, "model", cost);
    Charts.bars($("#chart-spend-model"), p.xs, p.series, usd);
    p = pivot(byKey, "key", tokens);
    Charts.bars($("#chart-tokens-key"), p.xs, p.series, short);
    p = pivot(byModel, "model", tokens);
    Charts.bars($("#chart-tokens-model"), p.xs, p.series, short);
    const t = totals.total;
    $("#kpi-spend").textContent = usd(t.cost);
    $("#kpi-tokens").textContent = `${short(t.tokens_in)} / ${short(t.tokens_out)}`;
    $("#kpi-range-requests").textContent = num(t.requests);
    fill($("#usage-totals tbody"), totals.totals, (tr, r) => {
      cell(tr, r.key == null ? "(admin token)" : r.key);
      cell(tr, r.model == null ? "–" : r.model);
      cell(tr, num(r.requests), "num");
      cell(tr, num(r.errors), "num");
      cell(tr, num(r.tokens_in), "num");
      cell(tr, num(r.tokens_out), "num");
      cell(tr, r.unpriced ? `${usd(r.cost)} (+${r.unpriced} unpriced)` : usd(r.cost), "num");
    });
  }

  function renderRecent(data) {
    fill($("#recent tbody"), data.requests, (tr, r) => {
      tr.dataset.requestId = r.request_id;
      cell(tr, r.time.replace("T", " ").replace("Z", ""));
      cell(tr, r.key == null ? "(admin token)" : r.key);
      const route = r.tried.length ? r.tried.join(" → ") : "–";
      cell(tr, `${r.requested || "–"} → ${route}${r.stream ? " (stream)" : ""}`, "route");
      const ok = r.status < 400 && !r.stream_error;
      const what = r.stream_error ? `${r.status} · ${r.stream_error}` :
        r.error_kind ? `${r.status} · ${r.error_kind}` : String(r.status);
      cell(tr, badge(what, ok ? "ok" : r.status === 429 ? "warn" : "bad"));
      cell(tr, `${num(r.tokens_in)} / ${num(r.tokens_out)}`, "num");
      cell(tr, usd(r.cost), "num");
      cell(tr, ms(r.total_ms), "num");
      cell(tr, r.request_id, "muted small");
    });
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    const bucket = BUCKETS[range];
    const q = `range=${range}&bucket=${bucket}`;
    try {
      const [overview, live, byKey, byModel, totals, last] = await Promise.all([
        get("/dashboard/api/overview"), get("/dashboard/api/traffic"),
        get(`/dashboard/api/usage?${q}&group_by=key`),
        get(`/dashboard/api/usage?${q}&group_by=model`),
        get(`/dashboard/api/usage?range=${range}&bucket=none&group_by=key,model`),
        get("/dashboard/api/recent?limit=50")]);
      renderOverview(overview);
      renderTraffic(live);
      renderUsage(byKey, byModel, totals);
      renderRecent(last);
      $("#updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
      $("#updated").className = "muted";
    } catch (err) {
      $("#updated").textContent = `not updated: ${err.message}`;
      $("#updated").className = "status-bad";
    } finally {
      busy = false;
    }
  }

  for (const button of document.querySelectorAll("#ranges button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of document.querySelectorAll("#ranges button")) b.classList.toggle("active", b === button);
      refresh();
    });
  }
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(refresh, 200); });
  refresh();
  setInterval(refresh, REFRESH);
})();
