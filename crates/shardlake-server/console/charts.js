// Charts on uPlot (vendored, vendor/uplot-1.6.32): line charts over time or
// numbers, bar charts over categories. One chart per container; drawing
// again replaces it, and charts follow their container's width.
"use strict";
(function (SL) {
  const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#65a30d", "#db2777"];
  const HEIGHT = 280;
  const live = new WeakMap(); // container -> {plot, observer}

  // What an Arrow type (as the API names it) is good for on a chart.
  function kindOf(type) {
    const t = String(type || "");
    if (/^(Timestamp|Date32|Date64)/.test(t)) return "time";
    if (/^(U?Int(8|16|32|64)|Float(16|32|64)|Decimal)/.test(t)) return "number";
    if (/^(Utf8|LargeUtf8|Utf8View|Boolean|Dictionary)/.test(t)) return "category";
    return "other";
  }

  // A first guess at a chart of a result: a time or category column across,
  // numeric columns up; null when the result has nothing to draw.
  function suggest(columns) {
    const kinds = columns.map((c) => kindOf(c.type));
    let x = kinds.indexOf("time");
    if (x < 0) x = kinds.indexOf("category");
    if (x < 0 && kinds.filter((k) => k === "number").length >= 2) x = kinds.indexOf("number");
    if (x < 0) return null;
    const ys = kinds.map((k, i) => (k === "number" && i !== x ? i : -1)).filter((i) => i >= 0).slice(0, 6);
    if (ys.length === 0) return null;
    return { x, ys, kind: kinds[x] === "category" ? "bar" : "line" };
  }

  // Seconds since the epoch of a timestamp as the API renders it (RFC 3339;
  // without an offset it is UTC).
  function seconds(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === "number") return v / 1000;
    let text = String(v);
    if (/^\d{4}-\d{2}-\d{2}$/.test(text)) text += "T00:00:00Z";
    else if (!/(Z|[+-]\d{2}:?\d{2})$/.test(text)) text += "Z";
    const t = Date.parse(text);
    return isNaN(t) ? null : t / 1000;
  }

  function number(v) {
    if (v === null || v === undefined || v === "") return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  }

  function destroy(container) {
    const prev = live.get(container);
    if (prev) {
      prev.observer.disconnect();
      prev.plot.destroy();
      live.delete(container);
    }
    SL.ui.clear(container);
  }

  function mount(container, opts, data) {
    destroy(container);
    const width = Math.max(container.clientWidth || 0, 280);
    const plot = new uPlot({ width, height: HEIGHT, ...opts }, data, container);
    const observer = new ResizeObserver(() => {
      const w = Math.max(container.clientWidth || 0, 280);
      if (Math.abs(w - plot.width) > 4) plot.setSize({ width: w, height: HEIGHT });
    });
    observer.observe(container);
    live.set(container, { plot, observer });
    return plot;
  }

  function short(label) {
    const s = String(label);
    return s.length > 14 ? s.slice(0, 13) + "…" : s;
  }

  // One bar per label and series: two series side by side, more overlaid
  // (each narrower than the one behind it).
  function barPaths(i, n) {
    if (n === 1) return uPlot.paths.bars({ size: [0.7, 120], align: 0 });
    if (n === 2) return uPlot.paths.bars({ size: [0.4, 60], align: i === 0 ? -1 : 1 });
    return uPlot.paths.bars({ size: [0.7 * (1 - i / (n + 1)), 120], align: 0 });
  }

  // Bars over `labels`, one series per entry of `series` ({label, values}).
  function bars(container, labels, series, options) {
    const opts = options || {};
    if (labels.length === 0) {
      SL.ui.notice(container, opts.empty || "Nothing to draw.");
      return null;
    }
    const xs = labels.map((_, i) => i);
    const n = series.length;
    return mount(
      container,
      {
        scales: {
          x: { time: false, range: [-0.5, labels.length - 0.5] },
          // Bars stand on zero.
          y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.05 : 1] },
        },
        legend: { show: n > 1 || !!opts.legend },
        cursor: { drag: { x: false, y: false } },
        axes: [
          {
            incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
            values: (u, splits) => splits.map((i) => (Number.isInteger(i) && labels[i] !== undefined ? short(labels[i]) : "")),
            rotate: labels.length > 8 ? -30 : 0,
            size: labels.length > 8 ? 70 : 40,
          },
          { values: (u, splits) => splits.map((v) => SL.ui.int(v)), size: 70 },
        ],
        series: [
          { label: opts.xLabel || "x", value: (u, i) => (i === null ? "" : labels[i]) },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: PALETTE[i % PALETTE.length],
            fill: PALETTE[i % PALETTE.length] + "cc",
            width: 1,
            points: { show: false },
            paths: barPaths(i, n),
            value: (u, v) => (v === null ? "—" : SL.ui.int(v)),
          })),
        ],
      },
      [xs, ...series.map((s) => s.values)],
    );
  }

  // Lines over `xs` (seconds when `time`), one per entry of `series`.
  function lines(container, xs, series, options) {
    const opts = options || {};
    if (xs.length === 0) {
      SL.ui.notice(container, opts.empty || "Nothing to draw.");
      return null;
    }
    return mount(
      container,
      {
        // One point alone gets an hour (or a unit) either side, not years.
        scales: { x: { time: !!opts.time, range: xs.length === 1 ? [xs[0] - (opts.time ? 3600 : 1), xs[0] + (opts.time ? 3600 : 1)] : undefined } },
        axes: [{}, { values: (u, splits) => splits.map((v) => SL.ui.int(v)), size: 70 }],
        series: [
          { label: opts.xLabel || "x" },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: PALETTE[i % PALETTE.length],
            width: 2,
            points: { show: xs.length <= 60 },
            spanGaps: true,
          })),
        ],
      },
      [xs, ...series.map((s) => s.values)],
    );
  }

  // A chart of a query result: column `x` across, columns `ys` up.
  function ofResult(container, columns, rows, x, ys, kind) {
    const xKind = kindOf(columns[x].type);
    const limit = kind === "bar" ? 200 : 100000;
    const used = rows.slice(0, limit);
    const series = (order) => ys.map((y) => ({ label: columns[y].name, values: order.map((r) => number(r[y])) }));
    if (kind === "bar") {
      bars(container, used.map((r) => (r[x] === null ? "NULL" : String(r[x]))), series(used), { xLabel: columns[x].name, legend: true });
    } else {
      const key = xKind === "time" ? (r) => seconds(r[x]) : (r) => number(r[x]);
      const points = used.map((r) => [key(r), r]).filter(([k]) => k !== null);
      points.sort((a, b) => a[0] - b[0]);
      lines(container, points.map(([k]) => k), series(points.map(([, r]) => r)), {
        time: xKind === "time",
        xLabel: columns[x].name,
      });
    }
    return rows.length > limit ? limit : null;
  }

  SL.charts = { kindOf, suggest, bars, lines, ofResult, destroy, seconds };
})((window.SL = window.SL || {}));
