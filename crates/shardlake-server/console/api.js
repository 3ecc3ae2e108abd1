// The JSON API as the console uses it: every request carries the token the
// user typed (kept in sessionStorage, never in a URL) and every failure
// becomes an ApiError with the API's stable code.
"use strict";
(function (SL) {
  const TOKEN_KEY = "shardlake.token";

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function setToken(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const t = token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  // The API answers every error as {"error": code, "message": ...}.
  async function failure(response) {
    let code = "http_" + response.status;
    let message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") {
        code = body.error;
        message = body.message || message;
      }
    } catch (_) {
      // Not JSON (a proxy's page): keep the status.
    }
    return new ApiError(response.status, code, message);
  }

  // One request. `options.signal` cancels it; `options.raw` returns the
  // Response instead of its JSON.
  async function request(method, path, body, options) {
    const opts = options || {};
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: opts.signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      if (e && e.name === "AbortError") throw new ApiError(0, "cancelled", "cancelled by you");
      throw new ApiError(0, "network_error", "the server could not be reached (" + e.message + ")");
    }
    if (!response.ok) throw await failure(response);
    return opts.raw ? response : response.json();
  }

  SL.api = {
    ApiError,
    token,
    setToken,
    get: (path, options) => request("GET", path, undefined, options),
    post: (path, body, options) => request("POST", path, body, options),
  };
})((window.SL = window.SL || {}));
