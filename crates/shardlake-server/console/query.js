// The query page: an editor, results paged 100 rows at a time, the scan
// statistics of the answer, charts, EXPLAIN as readable plans, exports in
// the endpoint's own formats, and a history kept in this browser.
"use strict";
(function (SL) {
  const { el, clear, int, bytes, ms, pct } = SL.ui;
  const PAGE = 100;
  // The most rows a result shown here may have: more is refused by the
  // server (result_too_large) rather than sent to a page that cannot hold
  // it. Exports have no such cap.
  const MAX_ROWS = 100000;
  const HISTORY_KEY = "shardlake.history";
  const HISTORY_MAX = 50;
  const $ = (id) => document.getElementById(id);

  let running = null; // AbortController of the query in flight
  let result = null; // {sql, columns, rows, stats}
  let page = 0;
  let lakeTotals = null; // {snapshot_id, events, bytes} of /v1/lake, for "of total"

  // ---- history -------------------------------------------------------
  function history() {
    try {
      const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(list) ? list : [];
    } catch (_) {
      return [];
    }
  }

  function remember(entry) {
    const list = history().filter((h) => h.sql !== entry.sql);
    list.unshift(entry);
    localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, HISTORY_MAX)));
    renderHistory();
  }

  function renderHistory() {
    const list = clear($("history-list"));
    const entries = history();
    if (entries.length === 0) {
      list.append(el("li", { class: "hint", text: "Queries you run appear here." }));
      return;
    }
    for (const h of entries) {
      const outcome = h.error ? h.error : int(h.rows) + " rows · " + ms(h.ms);
      list.append(
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "history-item" + (h.error ? " failed" : ""),
              title: h.sql,
              onclick: () => {
                $("sql").value = h.sql;
                $("sql").focus();
              },
            },
            el("code", { text: h.sql.replace(/\s+/g, " ").slice(0, 120) }),
            el("small", { text: outcome }),
          ),
        ),
      );
    }
  }

  // ---- running -------------------------------------------------------
  function busy(on) {
    $("run").disabled = on;
    $("explain").disabled = on;
    $("cancel").hidden = !on;
  }

  async function run(explain) {
    const typed = $("sql").value.trim();
    if (!typed || running) return;
    const sql = explain && !/^explain\b/i.test(typed) ? "EXPLAIN " + typed : typed;
    running = new AbortController();
    busy(true);
    $("query-error").hidden = true;
    $("query-status").textContent = "Running…";
    const started = performance.now();
    try {
      const answer = await SL.api.post("/v1/query", { sql, format: "json", max_rows: MAX_ROWS }, { signal: running.signal });
      const took = performance.now() - started;
      result = { sql, columns: answer.columns, rows: answer.rows, stats: answer.stats };
      page = 0;
      remember({ sql: typed, at: new Date().toISOString(), rows: answer.rows.length, ms: answer.stats.elapsed_ms });
      await showResult();
      // Last: the status line says the answer is on screen.
      $("query-status").textContent =
        int(answer.rows.length) + (answer.rows.length === 1 ? " row" : " rows") + " in " + ms(took) + " (server " + ms(answer.stats.elapsed_ms) + ")";
    } catch (e) {
      result = null;
      $("result").hidden = true;
      $("query-stats").hidden = true;
      $("query-status").textContent = "";
      SL.ui.errorBox($("query-error"), e);
      if (e.code !== "cancelled") remember({ sql: typed, at: new Date().toISOString(), error: e.code });
    } finally {
      running = null;
      busy(false);
      for (const id of ["export-csv", "export-json", "export-ndjson"]) $(id).disabled = !result;
    }
  }

  // ---- the answer ----------------------------------------------------
  function isPlan(columns) {
    return columns.length === 2 && columns[0].name === "plan_type" && columns[1].name === "plan";
  }

  async function showResult() {
    $("result").hidden = false;
    await renderStats(result.stats);
    const plan = isPlan(result.columns);
    $("tab-plan").hidden = !plan;
    renderTable();
    const suggestion = plan ? null : SL.charts.suggest(result.columns);
    $("tab-chart").hidden = !suggestion;
    if (suggestion) prepareChart(suggestion);
    if (plan) {
      renderPlan();
      select("plan");
    } else {
      select("table");
    }
  }

  function select(view) {
    for (const name of ["table", "chart", "plan"]) {
      const on = name === view;
      $("tab-" + name).setAttribute("aria-selected", String(on));
      $("tab-" + name).tabIndex = on ? 0 : -1;
      $("view-" + name).hidden = !on;
    }
    if (view === "chart") drawChart();
  }

  function renderTable() {
    const view = clear($("view-table"));
    const { columns, rows } = result;
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    const from = page * PAGE;
    const shown = rows.slice(from, from + PAGE);
    view.append(SL.ui.table(columns, shown, { label: "Result rows" }));
    if (rows.length === 0) view.append(el("p", { class: "hint", text: "No rows." }));
    if (pages > 1) {
      const go = (p) => () => {
        page = p;
        renderTable();
        $("pager-label").focus();
      };
      view.append(
        el(
          "nav",
          { class: "pager", "aria-label": "Result pages" },
          el("button", { type: "button", class: "secondary", onclick: go(0), disabled: page === 0 }, "First"),
          el("button", { type: "button", class: "secondary", onclick: go(page - 1), disabled: page === 0 }, "Previous"),
          el("span", {
            id: "pager-label",
            tabindex: "-1",
            text: "Rows " + int(from + 1) + "–" + int(from + shown.length) + " of " + int(rows.length),
          }),
          el("button", { type: "button", class: "secondary", onclick: go(page + 1), disabled: page >= pages - 1 }, "Next"),
          el("button", { type: "button", class: "secondary", onclick: go(pages - 1), disabled: page >= pages - 1 }, "Last"),
        ),
      );
    }
  }

  async function totalsFor(snapshotId) {
    if (lakeTotals && lakeTotals.snapshot_id === snapshotId) return lakeTotals;
    try {
      const lake = await SL.api.get("/v1/lake");
      lakeTotals = { snapshot_id: lake.snapshot_id, events: lake.totals.events, bytes: lake.totals.bytes };
      return lakeTotals.snapshot_id === snapshotId ? lakeTotals : null;
    } catch (_) {
      return null;
    }
  }

  async function renderStats(stats) {
    const dl = $("query-stats");
    const ids = stats.snapshot_ids || [];
    const totals = ids.length === 1 ? await totalsFor(ids[0]) : null;
    const of = (n, total) => (total ? " of " + int(total) : "");
    const items = [
      ["Files scanned", int(stats.files_scanned) + of(stats.files_scanned, stats.files_total), stats.files_pruned ? int(stats.files_pruned) + " pruned" : null],
      ["Bytes scanned", bytes(stats.bytes_scanned) + (totals ? " of " + bytes(totals.bytes) : ""), totals ? pct(stats.bytes_scanned, totals.bytes) : null],
      ["Rows scanned", int(stats.rows_scanned) + (totals ? " of " + int(totals.events) : ""), null],
      ["Partitions", int(stats.partitions_covered ?? stats.partitions_scanned) + " of " + int(stats.partitions_total), int(stats.partitions_pruned) + " pruned"],
      ["Rows returned", int(stats.rows_returned), null],
      ["Answered from", stats.answered_from + (stats.cache_hit ? " (cache hit)" : ""), stats.shared_run ? "shared a running query" : null],
      ["Time", ms(stats.elapsed_ms), "planning " + ms(stats.planning_ms)],
      ["Snapshot", ids.length ? ids.join(", ") : "none", null],
    ];
    SL.ui.cards(dl, items);
    dl.dataset.cacheHit = String(!!stats.cache_hit);
    dl.hidden = false;
  }

  // EXPLAIN's rows are (plan_type, plan): each plan in its own block, the
  // operator names picked out.
  function renderPlan() {
    const view = clear($("view-plan"));
    for (const [type, text] of result.rows) {
      const pre = el("pre", { class: "plan" });
      for (const line of String(text || "").split("\n")) {
        const m = /^(\s*)([A-Za-z][A-Za-z0-9_]*)(:?)(.*)$/.exec(line);
        if (m) pre.append(m[1], el("span", { class: "op", text: m[2] }), m[3] + m[4] + "\n");
        else pre.append(line + "\n");
      }
      view.append(el("details", { open: true }, el("summary", { text: type }), pre));
    }
  }

  // ---- charts --------------------------------------------------------
  function prepareChart(s) {
    const { columns } = result;
    const xSelect = clear($("chart-x"));
    columns.forEach((c, i) => xSelect.append(el("option", { value: String(i), selected: i === s.x }, c.name)));
    const fieldset = $("chart-y");
    while (fieldset.children.length > 1) fieldset.removeChild(fieldset.lastChild);
    columns.forEach((c, i) => {
      if (SL.charts.kindOf(c.type) !== "number") return;
      fieldset.append(
        el("label", { class: "check" }, el("input", { type: "checkbox", value: String(i), checked: s.ys.includes(i) }), " " + c.name),
      );
    });
    $("chart-kind").value = s.kind;
  }

  function drawChart() {
    if (!result) return;
    const x = Number($("chart-x").value);
    const ys = [...$("chart-y").querySelectorAll("input:checked")].map((i) => Number(i.value)).filter((i) => i !== x);
    const note = $("chart-note");
    if (ys.length === 0) {
      note.textContent = "Choose at least one numeric column to draw.";
      SL.charts.destroy($("chart"));
      return;
    }
    const cut = SL.charts.ofResult($("chart"), result.columns, result.rows, x, ys, $("chart-kind").value);
    note.textContent = cut ? "Drawn from the first " + int(cut) + " rows." : "";
  }

  // ---- export --------------------------------------------------------
  // The same SQL again in one of the endpoint's formats (CSV and NDJSON
  // stream; JSON is the document with columns, rows and stats), saved as a
  // file. Not capped at the page's MAX_ROWS: the server's limits apply.
  async function exportAs(format) {
    if (!result) return;
    $("query-status").textContent = "Exporting " + format.toUpperCase() + "…";
    try {
      const response = await SL.api.post("/v1/query", { sql: result.sql, format }, { raw: true });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: "shardlake-result." + format });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      $("query-status").textContent = "Exported " + bytes(blob.size) + " as " + format.toUpperCase() + ".";
    } catch (e) {
      SL.ui.errorBox($("query-error"), e);
      $("query-status").textContent = "";
    }
  }

  // ---- keyboard ------------------------------------------------------
  function onEditorKey(event) {
    const ta = event.target;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run(event.shiftKey);
    } else if (event.key === "Escape") {
      ta.dataset.escaped = "1"; // the next Tab leaves the editor
    } else if (event.key === "Tab" && !event.ctrlKey && !event.altKey && ta.dataset.escaped !== "1") {
      event.preventDefault();
      const { selectionStart: s, selectionEnd: e, value } = ta;
      ta.value = value.slice(0, s) + "  " + value.slice(e);
      ta.selectionStart = ta.selectionEnd = s + 2;
    } else {
      delete ta.dataset.escaped;
    }
  }

  function onTabKey(event) {
    const tabs = [...document.querySelectorAll('#result [role="tab"]:not([hidden])')];
    const i = tabs.indexOf(event.target);
    if (i < 0) return;
    const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
    if (!step) return;
    event.preventDefault();
    const next = tabs[(i + step + tabs.length) % tabs.length];
    next.focus();
    next.click();
  }

  function init() {
    const sql = $("sql");
    sql.value = history()[0]?.sql || "SELECT namespace, count(*) AS events\nFROM events\nGROUP BY namespace\nORDER BY namespace";
    sql.addEventListener("keydown", onEditorKey);
    $("run").addEventListener("click", () => run(false));
    $("explain").addEventListener("click", () => run(true));
    $("cancel").addEventListener("click", () => running && running.abort());
    $("export-csv").addEventListener("click", () => exportAs("csv"));
    $("export-json").addEventListener("click", () => exportAs("json"));
    $("export-ndjson").addEventListener("click", () => exportAs("ndjson"));
    $("history-clear").addEventListener("click", () => {
      localStorage.removeItem(HISTORY_KEY);
      renderHistory();
    });
    for (const name of ["table", "chart", "plan"]) $("tab-" + name).addEventListener("click", () => select(name));
    document.querySelector("#result .tabs").addEventListener("keydown", onTabKey);
    $("chart-form").addEventListener("submit", (e) => {
      e.preventDefault();
      drawChart();
    });
    renderHistory();
  }

  SL.query = {
    init,
    show: () => $("sql").focus(),
    forget: () => {
      lakeTotals = null;
      result = null;
      $("result").hidden = true;
      $("query-stats").hidden = true;
      $("query-error").hidden = true;
      $("query-status").textContent = "";
    },
  };
})((window.SL = window.SL || {}));
