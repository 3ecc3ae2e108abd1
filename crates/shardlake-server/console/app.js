// The console's shell: sign-in (the token is checked with GET /v1/whoami
// and kept in sessionStorage), the page switcher (#/query, #/lake,
// #/shards: the hash, so no token or state ever reaches a server log), and
// what the signed-in token may do.
"use strict";
(function (SL) {
  const $ = (id) => document.getElementById(id);
  const PAGES = ["query", "lake", "shards"];
  let me = null; // GET /v1/whoami

  function may(permission) {
    return !!me && me.permissions.includes(permission);
  }

  function showSignIn(message) {
    me = null;
    for (const p of PAGES) $("page-" + p).hidden = true;
    $("sign-in").hidden = false;
    $("sign-out").hidden = true;
    $("who").textContent = "";
    $("sign-in-error").textContent = message || "";
    $("token").focus();
  }

  function describe(who) {
    const scope = who.namespaces === "*" ? "all namespaces" : who.namespaces.join(", ");
    return who.name + " · " + who.permissions.join(", ") + " · " + scope;
  }

  // Who the stored token is; the sign-in form when there is none or the
  // server refuses it.
  async function identify() {
    try {
      me = await SL.api.get("/v1/whoami");
    } catch (e) {
      const had = !!SL.api.token();
      if (e.status === 401) {
        SL.api.setToken("");
        showSignIn(had ? "The server refused the token (" + e.code + ": " + e.message + ")." : "");
      } else {
        showSignIn(e.code + ": " + e.message);
      }
      return false;
    }
    $("sign-in").hidden = true;
    $("who").textContent = describe(me);
    $("sign-out").hidden = !me.auth_enabled;
    document.body.dataset.permissions = me.permissions.join(" ");
    return true;
  }

  function current() {
    const name = (location.hash || "").replace(/^#\/?/, "");
    return PAGES.includes(name) ? name : "query";
  }

  async function route() {
    if (!me) return;
    const page = current();
    for (const p of PAGES) {
      $("page-" + p).hidden = p !== page;
      const link = document.querySelector('nav.pages a[data-page="' + p + '"]');
      if (p === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (page !== "shards") SL.shards.hide();
    document.title = "shardlake · " + page;
    await SL[page].show();
    document.body.dataset.page = page;
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("sign-in-error").textContent = "Enter a token.";
      return;
    }
    SL.api.setToken(token);
    if (await identify()) {
      $("token").value = "";
      await route();
    }
  }

  function signOut() {
    SL.api.setToken("");
    SL.query.forget();
    SL.shards.hide();
    showSignIn("Signed out.");
  }

  async function start() {
    SL.query.init();
    SL.lake.init();
    SL.shards.init();
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    if (await identify()) await route();
    document.body.dataset.ready = "true";
  }

  SL.app = { may, who: () => me };
  document.addEventListener("DOMContentLoaded", start);
})((window.SL = window.SL || {}));
