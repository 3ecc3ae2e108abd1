// The lake page: what the lake holds per namespace and per emitting shard
// (GET /v1/lake), its snapshots over time (GET /v1/snapshots) and the last
// maintenance runs (GET /v1/maintenance, admin). Every figure is within the
// token's scope: the server filters, the page only draws.
"use strict";
(function (SL) {
  const { el, clear, int, bytes, ms, when } = SL.ui;
  const $ = (id) => document.getElementById(id);

  async function load() {
    $("lake-status").textContent = "Loading…";
    try {
      const [lake, snapshots] = await Promise.all([SL.api.get("/v1/lake"), SL.api.get("/v1/snapshots")]);
      renderTotals(lake);
      renderNamespaces(lake);
      renderShards(lake);
      renderSnapshots(snapshots.snapshots || []);
      $("lake-status").textContent = "Snapshot " + (lake.snapshot_id || "none") + " · loaded " + new Date().toLocaleTimeString();
    } catch (e) {
      $("lake-status").textContent = "";
      SL.ui.errorBox($("lake-totals"), e);
    }
    await renderMaintenance();
  }

  function renderTotals(lake) {
    const t = lake.totals;
    SL.ui.cards($("lake-totals"), [
      ["Events", int(t.events)],
      ["Namespaces", int(t.namespaces)],
      ["Data files", int(t.files), t.files ? bytes(t.bytes / t.files) + " per file" : null],
      ["Bytes", bytes(t.bytes)],
      ["Emitting shards", int(lake.shards.length)],
      ["Format", lake.format],
    ]);
  }

  function renderNamespaces(lake) {
    const ns = lake.namespaces;
    SL.charts.bars(
      $("lake-ns-chart"),
      ns.map((n) => n.namespace),
      [{ label: "events", values: ns.map((n) => n.events) }],
      { xLabel: "namespace", empty: "No events yet." },
    );
    const rows = ns.map((n) => [n.namespace, int(n.events), int(n.files), bytes(n.bytes), n.files ? bytes(n.bytes / n.files) : "—"]);
    clear($("lake-ns-table")).append(
      SL.ui.table(
        [
          { name: "namespace" },
          { name: "events", numeric: true },
          { name: "files", numeric: true },
          { name: "bytes", numeric: true },
          { name: "bytes per file", numeric: true },
        ],
        rows,
        { label: "Namespaces", compact: true },
      ),
    );
  }

  function renderShards(lake) {
    SL.charts.bars(
      $("lake-shard-chart"),
      lake.shards.map((s) => "shard " + s.shard_id),
      [{ label: "events", values: lake.shards.map((s) => s.events) }],
      { xLabel: "shard", empty: "No events yet." },
    );
  }

  // Rows in the table after each snapshot, or (for a scoped token, which is
  // not told table-wide totals) the number of commits so far.
  function renderSnapshots(snapshots) {
    const xs = snapshots.map((s) => s.committed_at_ms / 1000);
    const totals = snapshots.every((s) => s.total_rows !== null && s.total_rows !== undefined);
    const series = totals
      ? [{ label: "rows in the table", values: snapshots.map((s) => s.total_rows) }]
      : [{ label: "snapshots retained", values: snapshots.map((_, i) => i + 1) }];
    SL.charts.lines($("lake-snapshot-chart"), xs, series, { time: true, xLabel: "committed", empty: "No snapshots yet." });
    const recent = snapshots.slice(-10).reverse();
    clear($("lake-snapshot-table")).append(
      SL.ui.table(
        [
          { name: "snapshot" },
          { name: "committed" },
          { name: "operation" },
          { name: "rows added", numeric: true },
          { name: "rows", numeric: true },
          { name: "files", numeric: true },
          { name: "pinned by" },
        ],
        recent.map((s) => [
          s.snapshot_id + (s.current ? " (current)" : ""),
          when(s.committed_at),
          s.operation,
          int(s.added_rows),
          int(s.total_rows),
          int(s.total_files),
          s.pinned_by.join(", ") || "",
        ]),
        { label: "Latest snapshots", compact: true },
      ),
    );
  }

  async function renderMaintenance() {
    const box = $("lake-maintenance");
    if (!SL.app.may("admin")) {
      SL.ui.notice(box, "Maintenance runs are shown to admin tokens only.", "admin-only");
      return;
    }
    try {
      const m = await SL.api.get("/v1/maintenance");
      clear(box);
      box.append(
        el(
          "p",
          { class: "hint" },
          m.enabled
            ? "Background maintenance every " + int(m.interval_secs) + " s: " + int(m.runs) + " runs, " + int(m.failures) + " failures."
            : "Background maintenance is off ([maintenance] enabled = false); `shardlake maintain` runs it by hand.",
        ),
      );
      if (m.recent.length === 0) {
        box.append(el("p", { class: "notice", text: "No run yet." }));
        return;
      }
      box.append(
        SL.ui.table(
          [
            { name: "finished" },
            { name: "took", numeric: true },
            { name: "compaction" },
            { name: "snapshots expired", numeric: true },
            { name: "files removed", numeric: true },
            { name: "outcome" },
          ],
          m.recent.map((run) => {
            const r = run.report;
            if (!r) return [when(run.finished_at), "", "", "", "", "failed: " + run.error];
            const c = r.compaction;
            const compaction = c && c.files_added ? int(c.files_removed) + " → " + int(c.files_added) + " files" : "nothing to do";
            return [
              when(run.finished_at),
              ms(r.duration_ms),
              compaction,
              r.expiry ? r.expiry.snapshots_expired : 0,
              (r.cleanup ? r.cleanup.files_deleted : 0) + (r.expiry ? r.expiry.files_deleted || 0 : 0),
              r.skipped ? "skipped: " + r.skipped : "ok",
            ];
          }),
          { label: "Maintenance runs", compact: true },
        ),
      );
    } catch (e) {
      SL.ui.errorBox(box, e);
    }
  }

  function init() {
    $("lake-refresh").addEventListener("click", load);
  }

  SL.lake = { init, show: load };
})((window.SL = window.SL || {}));
