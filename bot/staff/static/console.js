// The staff console: the queue, one ticket (transcript, reply, claim, assign, close) and its masked context.
// Live updates arrive over server-sent events; everything shown is set as text, never as HTML.
"use strict";
(function () {
  const { S, meta, $, el, when, fill, api, showError } = window.HaoqingStaff;
  const me = meta("me");
  const view = { status: "open", selected: null, ticket: null, colleagues: [] };

  // --- the queue -----------------------------------------------------------------------------------------
  async function loadQueue() {
    const [list, open, claimed] = await Promise.all([
      api("GET", `/staff/api/tickets?status=${view.status}`),
      view.status === "open" ? null : api("GET", "/staff/api/tickets?status=open"),
      view.status === "claimed" ? null : api("GET", "/staff/api/tickets?status=claimed"),
    ]);
    const counts = { open: (open || list).length, claimed: (claimed || list).length };
    for (const badge of document.querySelectorAll("[data-count]")) {
      const n = counts[badge.dataset.count];
      badge.textContent = n ? String(n) : "";
    }
    const queue = $("queue");
    queue.replaceChildren();
    if (!list.length) {
      queue.append(el("li", { className: "empty", textContent: S["staff.empty_queue"] }));
      return;
    }
    for (const t of list) {
      const ctx = t.context || {};
      const li = el("li", { className: "ticket" + (t.id === view.selected ? " selected" : "") },
        el("div", { className: "line1" },
          el("span", { textContent: `#${t.id} · ${S["staff.channel." + t.channel] || t.channel}` }),
          el("span", { textContent: ctx.phone_masked || "" })),
        el("div", { className: "line2", textContent:
          `${S["staff.waiting"]} ${when(t.waiting_since)} · ${S["staff.reason." + t.reason] || ""}` +
          (t.claimed_by ? ` · ${S["staff.claimed_by"]} ${t.claimed_by}` : "") }));
      li.dataset.id = String(t.id);
      li.dataset.status = t.status;
      li.addEventListener("click", () => select(t.id));
      queue.append(li);
    }
  }

  function setTab(status) {
    view.status = status;
    for (const tab of document.querySelectorAll("[role=tab]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.status === status));
    }
    loadQueue().catch(showError);
  }

  // --- one ticket ----------------------------------------------------------------------------------------
  async function select(id) {
    view.selected = id;
    showError(null);
    for (const li of document.querySelectorAll("#queue li.ticket")) {
      li.classList.toggle("selected", li.dataset.id === String(id));
    }
    await loadTicket();
  }

  async function loadTicket() {
    if (view.selected === null) return;
    const t = await api("GET", `/staff/api/tickets/${view.selected}`);
    view.ticket = t;
    $("placeholder").hidden = true;
    $("ticket").hidden = false;
    $("ticket-title").textContent = `#${t.id} · ${S["staff.status." + t.status]}`;
    $("ticket").dataset.status = t.status;
    $("ticket-meta").textContent = [
      S["staff.channel." + t.channel] || t.channel,
      `${S["staff.waiting"]} ${when(t.waiting_since)}`,
      S["staff.reason." + t.reason] || "",
      t.claimed_by ? `${S["staff.claimed_by"]} ${t.claimed_by}` : "",
    ].filter(Boolean).join(" · ");
    const mine = t.status === "claimed" && t.claimed_by === me;
    $("claim").disabled = t.status !== "open";
    $("assign").disabled = t.status === "closed";
    $("colleague").disabled = t.status === "closed";
    $("close").disabled = t.status === "closed";
    $("send").disabled = !mine;
    $("reply").disabled = !mine;
    renderTranscript(t.transcript || []);
    renderContext(t.context || {});
    if (t.status === "closed") $("error").textContent = S["staff.closed_note"];
  }

  function renderTranscript(lines) {
    const list = $("transcript");
    list.replaceChildren();
    for (const line of lines) {
      const who = line.author === "staff" && line.staff ? `${S["staff.author.staff"]} ${line.staff}`
        : S["staff.author." + line.author] || line.author;
      list.append(el("li", { className: line.author },
        el("span", { className: "who", textContent: `${who} · ${when(line.at)}` }),
        el("span", { className: "text", textContent: line.text })));
    }
    list.scrollTop = list.scrollHeight;
  }

  function renderContext(ctx) {
    const dl = $("context");
    dl.replaceChildren();
    const row = (label, ...value) => dl.append(el("dt", { textContent: label }), el("dd", {}, ...value));
    row(S["staff.ctx.channel"], S["staff.channel." + ctx.channel] || ctx.channel || "");
    if (ctx.channels && ctx.channels.length > 1) {
      row(S["staff.ctx.channels"], ctx.channels.map((c) => S["staff.channel." + c] || c).join(" · "));
    }
    row(S["staff.ctx.state"], el("code", { textContent: ctx.state || "-" }));
    row(S["staff.ctx.lang"], ctx.lang || "");
    const verified = ctx.verified ? el("span", { className: "badge ok", textContent: S["staff.ctx.verified"] })
      : ctx.phone_masked ? el("span", { className: "badge warn", textContent: S["staff.ctx.verified_stale"] })
        : el("span", { className: "badge", textContent: S["staff.ctx.not_verified"] });
    row(S["staff.ctx.phone"], el("span", { id: "ctx-phone", textContent: (ctx.phone_masked || "-") + " " }), verified);
    row(S["staff.ctx.realname"], ctx.realname_checked ? S["staff.yes"] : S["staff.no"]);
    const requests = ctx.requests || [];
    if (requests.length) {
      const ul = el("ul", { id: "ctx-requests" });
      for (const r of requests) {
        const platforms = (r.platforms || []).map((p) => `${p.platform}: ${p.status}`).join(", ");
        ul.append(el("li", { textContent: `${r.reference} · ${r.status} · ${r.due || ""}${platforms ? " · " + platforms : ""}` }));
      }
      row(S["staff.ctx.requests"], ul);
    } else {
      row(S["staff.ctx.requests"], S["staff.ctx.no_requests"]);
    }
    row(S["staff.ctx.plan"], ctx.plan ? fill(S["staff.ctx.plan_line"], ctx.plan) : S["staff.ctx.no_plan"]);
  }

  async function act(path, body) {
    showError(null);
    try {
      await api("POST", `/staff/api/tickets/${view.selected}/${path}`, body);
    } catch (error) {
      showError(error);
    }
    await Promise.all([loadTicket(), loadQueue()]).catch(showError);
  }

  async function send() {
    const box = $("reply");
    const text = box.value.trim();
    if (!text) {
      showError(new Error(S["staff.error.empty"]));
      return;
    }
    box.disabled = true;
    try {
      await api("POST", `/staff/api/tickets/${view.selected}/messages`, { text });
      box.value = "";
      showError(null);
    } catch (error) {
      showError(error);
    }
    box.disabled = false;
    await loadTicket().catch(showError);
    box.focus();
  }

  async function loadColleagues() {
    view.colleagues = await api("GET", "/staff/api/staff");
    const select = $("colleague");
    select.replaceChildren();
    for (const c of view.colleagues) {
      if (c.name !== me) select.append(el("option", { value: c.name, textContent: c.name }));
    }
  }

  // --- live updates ----------------------------------------------------------------------------------------
  function listen() {
    const source = new EventSource("/staff/api/events");
    source.addEventListener("ready", () => { $("live-off").hidden = true; loadQueue().catch(showError); });
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      loadQueue().catch(showError);
      if (event.type === "resync" || event.ticket === view.selected) loadTicket().catch(showError);
    };
    source.onerror = () => { $("live-off").hidden = false; };
  }

  // --- wiring ------------------------------------------------------------------------------------------------
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => setTab(tab.dataset.status));
  }
  $("claim").addEventListener("click", () => act("claim"));
  $("close").addEventListener("click", () => act("close"));
  $("assign").addEventListener("click", () => {
    const to = $("colleague").value;
    if (to) act("assign", { to });
  });
  $("send").addEventListener("click", send);
  $("reply").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send();
  });
  const canned = $("canned");
  for (let n = 1; n <= 5; n += 1) {
    const text = S[`staff.canned.${n}`];
    const button = el("button", { type: "button", textContent: text, title: text });
    button.addEventListener("click", () => { $("reply").value = text; $("reply").focus(); });
    canned.append(button);
  }
  $("logout").addEventListener("click", async () => {
    await api("POST", "/staff/logout").catch(() => null);
    window.location.href = "/staff";
  });
  if (meta("role") === "admin") {
    $("broadcasts-link").hidden = false;
    const toggle = $("audit-toggle");
    toggle.hidden = false;
    toggle.addEventListener("click", async () => {
      const section = $("audit");
      section.hidden = !section.hidden;
      if (section.hidden) return;
      const rows = await api("GET", "/staff/api/audit").catch((error) => { showError(error); return []; });
      $("audit-rows").replaceChildren(...rows.map((row) => el("tr", {},
        el("td", { textContent: when(row.at) }), el("td", { textContent: row.staff }),
        el("td", { textContent: S["staff.audit.action." + row.action] || row.action }),
        el("td", { textContent: row.ticket === null ? "" : `#${row.ticket}` }),
        el("td", { textContent: row.detail }))));
    });
  }
  loadColleagues().catch(showError);
  loadQueue().catch(showError);
  listen();
})();
