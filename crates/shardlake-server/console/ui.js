// Small DOM and formatting helpers shared by the pages. Everything is
// built with createElement and textContent: no HTML strings, so nothing a
// query returns can become markup.
"use strict";
(function (SL) {
  // el("td", {class: "num", title: "x"}, child, "text", ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  const intFormat = new Intl.NumberFormat("en-US");
  function int(n) {
    return n === null || n === undefined ? "—" : intFormat.format(n);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function ms(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1) return n.toFixed(3) + " ms";
    if (n < 1000) return n.toFixed(1) + " ms";
    return (n / 1000).toFixed(2) + " s";
  }

  function pct(part, whole) {
    if (!whole) return "";
    return ((100 * part) / whole).toFixed(1) + "%";
  }

  function when(text) {
    if (!text) return "—";
    const d = new Date(text);
    return isNaN(d) ? String(text) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  // A JSON value as a table cell shows it.
  function cellText(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  // A table of `rows` (arrays) under `columns` ({name, type?, numeric?}).
  function table(columns, rows, options) {
    const opts = options || {};
    const numeric = columns.map((c) => c.numeric || (c.type && SL.charts.kindOf(c.type) === "number"));
    const head = el(
      "tr",
      {},
      columns.map((c, i) =>
        el("th", { scope: "col", class: numeric[i] ? "num" : null, title: c.type || null }, c.label || c.name),
      ),
    );
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      row.forEach((v, i) => {
        const text = cellText(v);
        const td = el("td", { class: numeric[i] ? "num" : null });
        if (text === null) td.append(el("span", { class: "null", text: "NULL" }));
        else if (v instanceof Node) td.append(v);
        else {
          td.textContent = text;
          if (text.length > 60) td.title = text;
        }
        tr.append(td);
      });
      body.append(tr);
    }
    return el(
      "div",
      { class: "table-wrap", tabindex: "0", role: "region", "aria-label": opts.label || "Table" },
      el("table", { class: opts.compact ? "compact" : null }, el("thead", {}, head), body),
    );
  }

  // Definition-list cards: [[label, value, note?], ...].
  function cards(container, items) {
    clear(container);
    for (const [label, value, note] of items) {
      container.append(
        el(
          "div",
          { class: "card" },
          el("dt", { text: label }),
          el("dd", {}, el("span", { class: "value" }, value), note ? el("small", { text: note }) : null),
        ),
      );
    }
  }

  function notice(container, text, kind) {
    clear(container).append(el("p", { class: kind || "notice", text }));
  }

  function errorBox(container, error) {
    clear(container);
    container.hidden = false;
    container.append(
      el("strong", { class: "code", text: error.code || "error" }),
      " ",
      el("span", { class: "message", text: error.message || String(error) }),
    );
  }

  SL.ui = { el, clear, int, bytes, ms, pct, when, table, cards, notice, errorBox };
})((window.SL = window.SL || {}));
