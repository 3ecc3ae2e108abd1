// The shards page (admin): the recorded topology, how events and keys
// spread over shards (GET /v1/shards: emitted by, and owned under the
// topology), the hot ones, and every migration with its phase and counters
// (GET /v1/migrations), polled every 2 s while the page is open and the tab
// visible. Polling, not server-sent events: EventSource cannot send the
// Authorization header, and the token never goes into a URL.
"use strict";
(function (SL) {
  const { el, clear, int, ms } = SL.ui;
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 2000;
  const PHASES = ["initializing", "copying", "catching_up", "fencing", "cutover", "flushing", "verifying", "complete"];
  let timer = null;
  let active = false;

  async function load() {
    if (!SL.app.may("admin")) {
      $("shards-admin").hidden = true;
      $("shards-status").textContent = "";
      SL.ui.notice($("shards-status"), "The shards page is for admin tokens: this token (" + SL.app.who().name + ") may not read topology or migrations.", "admin-only");
      return;
    }
    $("shards-admin").hidden = false;
    try {
      const [shards, migrations] = await Promise.all([SL.api.get("/v1/shards"), SL.api.get("/v1/migrations")]);
      renderTopology(shards.topology);
      renderBalance(shards);
      renderMigrations(migrations.migrations || []);
      $("shards-status").textContent = "Snapshot " + (shards.snapshot_id || "none") + " · updated " + new Date().toLocaleTimeString();
    } catch (e) {
      SL.ui.errorBox($("shards-status"), e);
    }
  }

  function strategy(s) {
    if (!s) return "";
    const extra = Object.entries(s)
      .filter(([k]) => k !== "kind")
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v));
    return s.kind + (extra.length ? " (" + extra.join(", ") + ")" : "");
  }

  function renderTopology(t) {
    const box = clear($("shards-topology"));
    if (!t) {
      box.append(
        el("p", {
          class: "notice",
          text: "No topology is recorded for this lake yet (the first migration records one). Shards below are those that emitted events.",
        }),
      );
      return;
    }
    box.append(
      el(
        "p",
        { class: "topology" },
        "Version ",
        el("strong", { text: String(t.version) }),
        " · strategy ",
        el("strong", { text: strategy(t.strategy) }),
        " · shards ",
        el("strong", { text: t.shards.join(", ") }),
      ),
    );
  }

  function renderBalance(s) {
    const b = s.balance;
    const basis = s.basis === "owned" ? "owned under the topology" : "by emitting shard";
    SL.ui.cards($("shards-balance"), [
      ["Balance score", b.balance_score.toFixed(3), "1 is even"],
      ["Mean events per shard", int(Math.round(b.mean)), basis],
      ["Max deviation", b.max_deviation_pct.toFixed(1) + "%", "cv " + b.coefficient_of_variation.toFixed(3)],
      [
        "Hot shards",
        s.hot.length ? s.hot.map((id) => "shard " + id).join(", ") : "none",
        "above the mean by " + s.hot_threshold_pct + "%",
      ],
    ]);
    const owned = s.basis === "owned";
    $("shards-chart-caption").textContent = owned ? "Events per shard: emitted by it, and owned by it under the topology" : "Events per emitting shard";
    const series = [{ label: "emitted", values: s.shards.map((r) => r.emitted_events) }];
    if (owned) series.push({ label: "owned", values: s.shards.map((r) => r.owned_events) });
    SL.charts.bars($("shards-chart"), s.shards.map((r) => "shard " + r.shard_id), series, { xLabel: "shard", legend: true, empty: "No events yet." });
    const columns = [{ name: "shard" }, { name: "emitted events", numeric: true }, { name: "emitted keys", numeric: true }];
    if (owned) columns.push({ name: "owned events", numeric: true }, { name: "owned keys", numeric: true }, { name: "in topology" });
    columns.push({ name: "hot" });
    const rows = s.shards.map((r) => {
      const row = [String(r.shard_id), r.emitted_events, r.emitted_keys];
      if (owned) row.push(r.owned_events, r.owned_keys, r.in_topology ? "yes" : "no");
      row.push(r.hot ? el("span", { class: "badge hot", text: "hot" }) : "");
      return row;
    });
    clear($("shards-table")).append(SL.ui.table(columns, rows, { label: "Shards", compact: true }));
  }

  function progress(m) {
    const i = PHASES.indexOf(m.phase);
    const done = m.status === "completed" ? PHASES.length - 1 : Math.max(i, 0);
    const bar = el("progress", { max: String(PHASES.length - 1), value: String(done), "aria-label": "Phase " + (done + 1) + " of " + PHASES.length });
    return el("span", { class: "phase" }, bar, " " + m.phase.replace(/_/g, " "));
  }

  function renderMigrations(list) {
    const box = clear($("shards-migrations"));
    if (list.length === 0) {
      box.append(el("p", { class: "notice", text: "No migration has run on this lake." }));
      return;
    }
    const rows = list.map((m) => [
      m.id,
      el("span", { class: "badge status-" + m.status, text: m.status.replace(/_/g, " ") }),
      progress(m),
      "v" + m.plan.from.version + " → v" + m.plan.to.version,
      int(m.keys_verified) + " / " + int(m.keys_moving),
      int(m.events_copied + m.events_skipped),
      int(m.writes_buffered) + " / " + int(m.writes_flushed),
      int(m.catch_up_rounds),
      m.duration_ms ? ms(m.duration_ms) : "—",
      m.error ? m.error.code + ": " + m.error.message : "",
    ]);
    box.append(
      SL.ui.table(
        [
          { name: "migration" },
          { name: "status" },
          { name: "phase" },
          { name: "topology" },
          { name: "keys verified / moving", numeric: true },
          { name: "events copied", numeric: true },
          { name: "writes buffered / flushed", numeric: true },
          { name: "catch-ups", numeric: true },
          { name: "took", numeric: true },
          { name: "error" },
        ],
        rows,
        { label: "Migrations", compact: true },
      ),
    );
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (active && $("shards-live").checked && !document.hidden && SL.app.may("admin")) {
      timer = setTimeout(async () => {
        await load();
        schedule();
      }, POLL_MS);
    }
  }

  function init() {
    $("shards-live").addEventListener("change", schedule);
    document.addEventListener("visibilitychange", schedule);
  }

  SL.shards = {
    init,
    show: async () => {
      active = true;
      await load();
      schedule();
    },
    hide: () => {
      active = false;
      schedule();
    },
  };
})((window.SL = window.SL || {}));
