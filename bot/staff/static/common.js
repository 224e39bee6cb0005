// What every staff page's script shares: its strings, the CSRF token, element helpers and the JSON API call that
// sends the token, follows a lapsed login back to /staff and turns an error answer into an Error with its code.
// Loaded before the page's own script; everything it shows is set as text, never as HTML.
"use strict";
window.HaoqingStaff = (function () {
  const S = JSON.parse(document.getElementById("strings").textContent);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const csrf = meta("csrf");
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (_m, key) => (key in values ? String(values[key]) : ""));
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                          credentials: "same-origin" });
    if (response.status === 401) {
      window.location.href = "/staff";
      throw new Error("login required");
    }
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(payload.message || S["staff.error.generic"]);
      error.code = payload.error;
      throw error;
    }
    return payload;
  }

  function showError(error) {
    $("error").textContent = error ? (error.message || S["staff.error.generic"]) : "";
  }

  return { S, meta, csrf, $, el, when, fill, api, showError };
})();
