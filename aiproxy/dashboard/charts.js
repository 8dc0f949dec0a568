// A small SVG charting kit for the dashboard: line charts and stacked bar charts over a time
// axis, drawn with DOM calls only (no library, no innerHTML: every label is text content).
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3867d6", "#20bf6b", "#fa8231", "#8854d0", "#eb3b5a", "#0fb9b1",
    "#f7b731", "#4b6584", "#a55eea", "#26de81"];
  const PAD = { left: 60, right: 8, top: 8, bottom: 22 };

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function node(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function timeLabel(ts, span) {
    const d = new Date(ts * 1000);
    const hh = String(d.getUTCHours()).padStart(2, "0");
    const mm = String(d.getUTCMinutes()).padStart(2, "0");
    if (span <= 2 * 86400) return `${hh}:${mm}`;
    return `${d.getUTCMonth() + 1}/${d.getUTCDate()}`;
  }

  // The frame: an SVG with y grid lines and labels, x labels; returns the scales.
  function frame(container, xs, yMax, format) {
    container.textContent = "";
    const width = Math.max(container.clientWidth, 200);
    const height = Math.max(container.clientHeight, 120);
    const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" }, container);
    const w = width - PAD.left - PAD.right;
    const h = height - PAD.top - PAD.bottom;
    const top = niceMax(yMax);
    const y = (v) => PAD.top + h - (v / top) * h;
    const step = xs.length > 1 ? w / (xs.length - 1) : w;
    const x = (i) => PAD.left + (xs.length > 1 ? i * step : w / 2);
    for (let k = 0; k <= 4; k++) {
      const v = (top * k) / 4;
      node("line", { class: "grid", x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v) },
        svg);
      const t = node("text", { x: PAD.left - 4, y: y(v) + 3, "text-anchor": "end" }, svg);
      t.textContent = format(v);
    }
    const span = xs.length > 1 ? xs[xs.length - 1] - xs[0] : 0;
    const every = Math.max(1, Math.ceil(xs.length / 6));
    xs.forEach((ts, i) => {
      if (i % every) return;
      const t = node("text", { x: x(i), y: height - 6, "text-anchor": "middle" }, svg);
      t.textContent = timeLabel(ts, span);
    });
    return { svg, x, y, w, h, step, top };
  }

  function empty(container, message) {
    container.textContent = "";
    const div = document.createElement("div");
    div.className = "empty";
    div.textContent = message || "no data in this range";
    container.appendChild(div);
    container.dataset.points = "0";
  }

  function legend(container, names) {
    const fig = container.parentElement;
    let box = fig.querySelector(".legend");
    if (!box) {
      box = document.createElement("div");
      box.className = "legend";
      fig.appendChild(box);
    }
    box.textContent = "";
    names.forEach((name, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = color(i);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      box.appendChild(item);
    });
  }

  // series: [{name, values: [number|null]}], one value per x.
  function line(container, xs, series, format) {
    const max = Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v != null)));
    if (!xs.length || !series.some((s) => s.values.some((v) => v != null))) {
      empty(container, "no traffic yet");
      legend(container, []);
      return;
    }
    const f = frame(container, xs, max, format);
    let points = 0;
    series.forEach((s, si) => {
      let d = "";
      s.values.forEach((v, i) => {
        if (v == null) return;
        d += `${d ? "L" : "M"}${f.x(i).toFixed(1)},${f.y(v).toFixed(1)}`;
        const dot = node("circle", { cx: f.x(i), cy: f.y(v), r: 2, fill: color(si) }, f.svg);
        node("title", {}, dot).textContent = `${s.name}: ${format(v)}`;
        points++;
      });
      node("path", { class: "series", d, stroke: color(si) }, f.svg);
    });
    container.dataset.points = String(points);
    legend(container, series.length > 1 ? series.map((s) => s.name) : []);
  }

  // Stacked bars: series values are summed per x.
  function bars(container, xs, series, format) {
    const totals = xs.map((_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
    const max = Math.max(0, ...totals);
    if (!xs.length || !(max > 0)) {
      empty(container);
      legend(container, []);
      return;
    }
    const f = frame(container, xs, max, format);
    const width = Math.max(2, Math.min(40, f.step * 0.7 || f.w / 2));
    let count = 0;
    xs.forEach((ts, i) => {
      let base = 0;
      series.forEach((s, si) => {
        const v = s.values[i] || 0;
        if (!(v > 0)) return;
        const y0 = f.y(base), y1 = f.y(base + v);
        const rect = node("rect", { class: "bar", x: f.x(i) - width / 2, y: y1, width,
          height: Math.max(1, y0 - y1), fill: color(si) }, f.svg);
        node("title", {}, rect).textContent = `${s.name}: ${format(v)}`;
        base += v;
        count++;
      });
    });
    container.dataset.points = String(count);
    legend(container, series.map((s) => s.name));
  }

  return { line, bars, color };
})();
