"""Drives the web console in headless Chromium (Playwright), as a person would.

Called by tests/it/console.rs with a live server. It signs in, runs queries
(keyboard shortcut, paging, stats panel, charts, EXPLAIN, an error, an
export), opens the lake and shards pages, watches a migration the test holds
running finish without a reload, checks a scoped token's view, and checks the
layout at 1280x800 and at a phone's width. It saves a screenshot of every
page into --out and prints one JSON report on stdout of what it saw, for the
Rust test to assert on. It asks the test to let the migration go by printing
`open-gate` on stdout and waiting for a line on stdin.
"""

import argparse
import json
import os
import sys

from playwright.sync_api import expect, sync_playwright

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--admin", required=True)
parser.add_argument("--scoped", required=True)
parser.add_argument("--chromium", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

TIMEOUT_MS = 30_000
report = {"screenshots": [], "console_errors": []}
CONTEXTS = []  # browser contexts, for screenshots of a failure


def shot(page, name, full_page=True):
    path = os.path.join(args.out, name + ".png")
    page.screenshot(path=path, full_page=full_page)
    report["screenshots"].append(path)


def watch_errors(page):
    # Console errors include Content-Security-Policy violations and
    # uncaught exceptions; a 4xx the page asked for on purpose is logged
    # by Chromium as a failed resource, which is expected here.
    def on_console(msg):
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            report["console_errors"].append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: report["console_errors"].append("pageerror: " + str(e)))


def sign_in(page, token):
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("body[data-page=query]")


def run_sql(page, sql, shortcut=True):
    page.fill("#sql", sql)
    page.evaluate("document.getElementById('query-status').textContent = ''")
    if shortcut:
        page.focus("#sql")
        page.keyboard.press("Control+Enter")
    else:
        page.click("#run")
    page.wait_for_function(
        """() => {
            const s = document.getElementById('query-status').textContent;
            const e = document.getElementById('query-error');
            return (s && !s.startsWith('Running')) || !e.hidden;
        }"""
    )


def table(page, selector):
    return page.evaluate(
        """(sel) => [...document.querySelectorAll(sel + ' tbody tr')]
            .map(tr => [...tr.children].map(td => td.textContent))""",
        selector,
    )


def stats(page):
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#query-stats .card')]
            .map(c => [c.querySelector('dt').textContent, c.querySelector('dd .value').textContent]))"""
    )


def overflow(page):
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def goto(page, name):
    page.click(f'nav.pages a[data-page="{name}"]')
    page.wait_for_selector(f"body[data-page={name}]")


def main(p):
    browser = p.chromium.launch(
        executable_path=args.chromium, args=["--disable-gpu", "--disable-quic"]
    )
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    CONTEXTS.append(context)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch_errors(page)

    # ---- first load: redirected to the console, asked for a token ----
    response = page.goto(args.url + "/")
    report["landed_on"] = page.url
    report["index_csp"] = response.header_value("content-security-policy")
    page.wait_for_selector("body[data-ready=true]")
    report["sign_in_visible"] = page.is_visible("#sign-in")
    report["first_contentful_paint_ms"] = page.evaluate(
        "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
    )
    report["dom_content_loaded_ms"] = page.evaluate(
        "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
    )
    report["load_ms"] = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    report["bytes_transferred"] = page.evaluate(
        """() => performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))
            .reduce((n, r) => n + (r.encodedBodySize || 0), 0)"""
    )
    shot(page, "01-sign-in")

    page.fill("#token", "not-a-token-at-all-0000")
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("unauthorized")
    report["bad_token_error"] = page.text_content("#sign-in-error")

    sign_in(page, args.admin)
    report["who_admin"] = page.text_content("#who")
    report["token_in_session_storage"] = page.evaluate(
        "sessionStorage.getItem('shardlake.token')"
    ) == args.admin
    report["token_in_url"] = args.admin in page.url

    # ---- a query, by keyboard: table, stats, chart ----
    run_sql(page, "SELECT namespace, count(*) AS events FROM events GROUP BY namespace ORDER BY namespace")
    report["by_namespace"] = table(page, "#view-table")
    report["stats_first"] = stats(page)
    report["chart_tab_visible"] = page.is_visible("#tab-chart")
    page.click("#tab-chart")
    page.wait_for_selector("#chart canvas")
    report["chart_kind_namespace"] = page.input_value("#chart-kind")
    shot(page, "02-query-chart")

    # The same query again is answered by the cache.
    run_sql(page, "SELECT namespace, count(*) AS events FROM events GROUP BY namespace ORDER BY namespace", shortcut=False)
    report["stats_again"] = stats(page)
    report["cache_hit_again"] = page.get_attribute("#query-stats", "data-cache-hit")

    # A time series: a line chart over time.
    run_sql(page, "SELECT date_trunc('hour', ts) AS hour, count(*) AS events FROM events GROUP BY 1 ORDER BY 1")
    page.click("#tab-chart")
    page.wait_for_selector("#chart canvas")
    report["chart_kind_time"] = page.input_value("#chart-kind")
    report["stats_scan"] = stats(page)
    report["chart_series_time"] = page.evaluate(
        "[...document.querySelectorAll('#chart .u-legend .u-series')].map(s => s.textContent.trim())"
    )
    shot(page, "03-query-time-chart")

    # Paging through 250 rows.
    run_sql(page, "SELECT namespace, seq, event_type FROM events ORDER BY namespace, seq LIMIT 250")
    report["page_1_label"] = page.text_content("#pager-label")
    report["page_1_rows"] = len(table(page, "#view-table"))
    page.click("nav.pager button:has-text('Next')")
    report["page_2_label"] = page.text_content("#pager-label")
    page.click("nav.pager button:has-text('Last')")
    report["page_last_label"] = page.text_content("#pager-label")
    report["page_last_rows"] = len(table(page, "#view-table"))
    shot(page, "04-query-table")

    # Export: the endpoint's CSV of the last query.
    with page.expect_download() as download:
        page.click("#export-csv")
    path = os.path.join(args.out, "export.csv")
    download.value.save_as(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    report["export_header"] = lines[0] if lines else None
    report["export_rows"] = len(lines) - 1
    with page.expect_download() as download:
        page.click("#export-json")
    path = os.path.join(args.out, "export.json")
    download.value.save_as(path)
    with open(path, encoding="utf-8") as f:
        exported = json.load(f)
    report["export_json_columns"] = [c["name"] for c in exported["columns"]]
    report["export_json_rows"] = len(exported["rows"])
    with page.expect_download() as download:
        page.click("#export-ndjson")
    path = os.path.join(args.out, "export.ndjson")
    download.value.save_as(path)
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f.read().splitlines()]
    report["export_ndjson_rows"] = sum(1 for line in lines if "stats" not in line)
    report["export_ndjson_stats_last"] = "stats" in lines[-1]

    # EXPLAIN, readable.
    page.fill("#sql", "SELECT count(*) FROM events WHERE namespace = 'tenant-002'")
    page.click("#explain")
    page.wait_for_selector("#view-plan pre.plan")
    report["plan_types"] = page.evaluate(
        "[...document.querySelectorAll('#view-plan summary')].map(s => s.textContent)"
    )
    report["plan_operators"] = page.evaluate(
        "[...new Set([...document.querySelectorAll('#view-plan .op')].map(s => s.textContent))]"
    )
    shot(page, "05-query-explain")

    # An error shows its stable code; history keeps it.
    run_sql(page, "SELECT no_such_column FROM events")
    report["error_text"] = page.text_content("#query-error")
    run_sql(page, "DROP TABLE events")
    report["error_not_allowed"] = page.text_content("#query-error .code")
    report["history"] = page.evaluate(
        "[...document.querySelectorAll('#history-list .history-item')].map(b => [b.title, b.classList.contains('failed')])"
    )
    shot(page, "06-query-error")

    # Tab in the editor indents instead of leaving it.
    page.fill("#sql", "")
    page.focus("#sql")
    page.keyboard.press("Tab")
    page.keyboard.type("x")
    report["tab_indents"] = page.input_value("#sql")
    report["overflow_query"] = overflow(page)

    # ---- the lake page ----
    goto(page, "lake")
    page.wait_for_selector("#lake-ns-chart canvas")
    page.wait_for_selector("#lake-shard-chart canvas")
    page.wait_for_selector("#lake-maintenance table")
    report["lake_totals"] = page.text_content("#lake-totals")
    report["lake_namespaces"] = table(page, "#lake-ns-table")
    report["lake_maintenance_rows"] = len(table(page, "#lake-maintenance"))
    report["lake_snapshot_rows"] = len(table(page, "#lake-snapshot-table"))
    report["overflow_lake"] = overflow(page)
    shot(page, "07-lake")

    # ---- the shards page: a migration the test holds running ----
    goto(page, "shards")
    page.wait_for_selector("#shards-migrations table")
    report["topology"] = page.text_content("#shards-topology")
    report["shards_rows"] = table(page, "#shards-table")
    report["shards_balance"] = page.text_content("#shards-balance")
    report["migration_before"] = table(page, "#shards-migrations")
    report["overflow_shards"] = overflow(page)
    shot(page, "08-shards-running")
    page.evaluate("window.notReloaded = true")
    print("open-gate", flush=True)
    sys.stdin.readline()
    # The page polls: the newest migration turns completed by itself.
    page.wait_for_function(
        "() => document.querySelector('#shards-migrations tbody tr td:nth-child(2)').textContent === 'completed'",
        timeout=60_000,
    )
    report["shards_page_not_reloaded"] = page.evaluate("window.notReloaded === true")
    report["migration_after"] = table(page, "#shards-migrations")
    shot(page, "09-shards-completed")

    # ---- a narrow window ----
    page.set_viewport_size({"width": 420, "height": 860})
    goto(page, "query")
    report["overflow_narrow_query"] = overflow(page)
    shot(page, "10-query-narrow")
    goto(page, "lake")
    page.wait_for_selector("#lake-ns-chart canvas")
    report["overflow_narrow_lake"] = overflow(page)
    shot(page, "11-lake-narrow")

    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    report["token_after_sign_out"] = page.evaluate("sessionStorage.getItem('shardlake.token')")

    # A second visit: the hashed assets come from the browser's cache
    # (immutable), the page itself is revalidated (304).
    page.set_viewport_size({"width": 1280, "height": 800})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    report["reload_first_contentful_paint_ms"] = page.evaluate(
        "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
    )
    report["reload_assets_from_cache"] = page.evaluate(
        """() => performance.getEntriesByType('resource')
            .filter(r => r.name.includes('/console/assets/') && r.transferSize === 0).length"""
    )

    # ---- a scoped token, in a fresh tab session ----
    scoped = browser.new_context(viewport={"width": 1280, "height": 800})
    CONTEXTS.append(scoped)
    scoped.set_default_timeout(TIMEOUT_MS)
    page = scoped.new_page()
    watch_errors(page)
    page.goto(args.url + "/console/")
    page.wait_for_selector("body[data-ready=true]")
    sign_in(page, args.scoped)
    report["who_scoped"] = page.text_content("#who")
    run_sql(page, "SELECT namespace, count(*) AS events FROM events GROUP BY namespace ORDER BY namespace")
    report["scoped_by_namespace"] = table(page, "#view-table")
    shot(page, "12-scoped-query")
    goto(page, "lake")
    page.wait_for_selector("#lake-ns-chart canvas")
    page.wait_for_selector("#lake-maintenance .admin-only")
    report["scoped_lake_namespaces"] = table(page, "#lake-ns-table")
    report["scoped_lake_text"] = page.text_content("#page-lake")
    report["scoped_maintenance"] = page.text_content("#lake-maintenance")
    shot(page, "13-scoped-lake")
    goto(page, "shards")
    page.wait_for_selector("#shards-status .admin-only")
    report["scoped_shards"] = page.text_content("#shards-status")
    report["scoped_shards_admin_hidden"] = page.is_hidden("#shards-admin")
    shot(page, "14-scoped-shards")

    browser.close()


with sync_playwright() as p:
    try:
        main(p)
    except Exception:
        # What the page looked like when it went wrong, and what it logged.
        for context in list(CONTEXTS):
            for i, page in enumerate(context.pages):
                try:
                    shot(page, f"failure-{len(report['screenshots'])}-{i}")
                except Exception:
                    pass
        print("screenshots: " + ", ".join(report["screenshots"]), file=sys.stderr)
        print("console errors: " + json.dumps(report["console_errors"]), file=sys.stderr)
        raise

print(json.dumps(report), flush=True)
