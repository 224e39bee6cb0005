// The staff console's broadcasts page (admin only): compose per language with a live preview per channel, pick
// the recipients, dry-run the counts, create and start, then watch the progress (polled once a second) and pause,
// resume or cancel; the CSV report when it is done. Everything shown is set as text, never as HTML.
"use strict";
(function () {
  const { S, $, el, when, fill, api, showError } = window.HaoqingStaff;
  const LANGS = ["zh_CN", "en"];
  const CHANNELS = ["telegram", "wechat", "web"];
  const FINISHED = ["done", "cancelled"];
  const view = { watching: null, timer: null, dryKey: null, previewTimer: null, lastStatus: null,
                 textsError: false };

  const channelName = (c) => S["staff.channel." + c] || c;
  const statusName = (s) => S["staff.bc.status." + s] || s;

  // --- compose ---------------------------------------------------------------------------------------------
  function texts() {
    const out = {};
    for (const lang of LANGS) out[lang] = $("text-" + lang).value;
    return out;
  }

  function segment() {
    const out = {};
    if ($("seg-channel").value) out.channel = $("seg-channel").value;
    if ($("seg-lang").value) out.lang = $("seg-lang").value;
    if ($("seg-open").value) out.has_open_requests = $("seg-open").value === "yes";
    if ($("seg-plan").value) out.has_plan = $("seg-plan").value === "yes";
    const days = $("seg-days").value.trim();
    if (days) out.active_days = Number(days);
    return out;
  }

  function schedule() {
    const value = $("schedule").value;
    // datetime-local is the computer's local time; the API takes it as UTC with its offset.
    return value ? new Date(value).toISOString() : null;
  }

  function request(dryRun) {
    return { texts: texts(), segment: segment(), dry_run: dryRun, scheduled_at: schedule() };
  }

  // What the last dry run counted: starting is offered only for exactly those texts, recipients and schedule.
  const keyOf = () => JSON.stringify(request(false));

  function composeChanged() {
    $("create-start").disabled = view.dryKey === null || view.dryKey !== keyOf();
    if (view.dryKey !== null && view.dryKey !== keyOf()) $("dry").hidden = true;
  }

  async function loadPreview() {
    const current = texts();
    let rendered;
    try {
      rendered = await api("POST", "/staff/api/broadcasts/preview", { texts: current });
    } catch (error) {
      // Texts the channels cannot take (too long, control characters) say so while they are typed.
      if (error.code === "bad_texts") view.textsError = true;
      throw error;
    }
    if (view.textsError) {
      view.textsError = false;
      showError(null);
    }
    const box = $("preview");
    box.replaceChildren();
    // WeChat users outside the customer-service window get the template, which shows the first line only.
    for (const channel of [...CHANNELS, "wechat_template"]) {
      if (!rendered[channel]) continue;
      const title = channel === "wechat_template" ? S["staff.bc.wechat_template"] : channelName(channel);
      const column = el("div", { className: "channel-preview " + channel }, el("h4", { textContent: title }));
      column.dataset.channel = channel;
      for (const lang of LANGS) {
        const text = (rendered[channel] || {})[lang] || "";
        const bubble = el("div", { className: "bubble" + (text ? "" : " empty") },
          el("span", { className: "lang", textContent: S["staff.bc.lang." + lang] }),
          el("span", { className: "text", textContent: text || S["staff.bc.empty_preview"] }));
        bubble.dataset.lang = lang;
        column.append(bubble);
      }
      box.append(column);
    }
  }

  function previewSoon() {
    clearTimeout(view.previewTimer);
    view.previewTimer = setTimeout(() => loadPreview().catch(showError), 250);
  }

  function bothTexts() {
    const t = texts();
    if (LANGS.some((lang) => !t[lang].trim())) {
      showError(new Error(S["staff.bc.empty_texts"]));
      return false;
    }
    return true;
  }

  async function dryRun() {
    showError(null);
    if (!bothTexts()) return;
    const key = keyOf();
    const counts = await api("POST", "/staff/api/broadcasts", request(true)).catch((error) => {
      showError(error);
      return null;
    });
    if (counts === null) return;
    const rows = $("dry-rows");
    rows.replaceChildren();
    const only = (counts.segment || {}).channel;
    for (const channel of CHANNELS) {
      if (only && only !== channel) continue;
      const c = (counts.by_channel || {})[channel] || { recipients: 0 };
      const line = (kind, n) => el("li", { className: kind, textContent: fill(S["staff.bc.dry." + kind], { n }) });
      // WeChat: reachable now (inside the customer-service window), only by template, or not at all; elsewhere
      // only users who blocked the bot or unfollowed are unreachable.
      const reach = el("ul", { className: "reach" });
      if (channel === "wechat") {
        reach.append(line("window", c.window || 0), line("template", c.template || 0),
                     line("unreachable", c.unreachable || 0));
      } else if (c.unreachable) {
        reach.append(line("unreachable", c.unreachable));
      }
      const row = el("tr", {}, el("td", { textContent: channelName(channel) }),
        el("td", { className: "num", textContent: String(c.recipients || 0) }), el("td", {}, reach));
      row.dataset.channel = channel;
      rows.append(row);
    }
    $("dry-total").textContent = fill(S["staff.bc.dry.total"], { n: counts.recipients || 0 });
    $("dry-opted-out").textContent = fill(S["staff.bc.dry.opted_out"], { n: counts.opted_out || 0 });
    $("dry").hidden = false;
    view.dryKey = key;
    composeChanged();
  }

  async function createAndStart() {
    showError(null);
    if (!bothTexts() || view.dryKey !== keyOf()) return;
    $("create-start").disabled = true;
    try {
      const made = await api("POST", "/staff/api/broadcasts", request(false));
      await api("POST", `/staff/api/broadcasts/${made.id}/start`);
      // The dry run's counts stay in view as the record of what was started; a new start needs a new dry run.
      view.dryKey = null;
      await watch(made.id);
    } catch (error) {
      showError(error);
    }
    composeChanged();
  }

  // --- progress --------------------------------------------------------------------------------------------
  function eta(seconds) {
    if (seconds === null || seconds === undefined) return S["staff.bc.eta.unknown"];
    const total = Math.max(0, Math.round(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    if (h) return fill(S["staff.bc.eta.hours"], { h, m });
    if (m) return fill(S["staff.bc.eta.minutes"], { m, s });
    return fill(S["staff.bc.eta.seconds"], { s });
  }

  function render(b) {
    $("watch-empty").hidden = true;
    $("progress-view").hidden = false;
    $("progress-view").dataset.status = b.status;
    $("progress-view").dataset.id = String(b.id);
    $("bc-title").textContent = `#${b.id} · ${statusName(b.status)}`;
    const scheduled = b.status === "scheduled" && b.scheduled_at;
    $("bc-schedule").hidden = !scheduled;
    $("bc-schedule").textContent = scheduled ? fill(S["staff.bc.scheduled_for"], { at: when(b.scheduled_at) }) : "";
    const total = b.recipients || 0;
    const done = (b.sent || 0) + (b.failed || 0) + (b.unreachable || 0);
    $("bar").max = Math.max(total, 1);
    $("bar").value = total ? done : (FINISHED.includes(b.status) ? 1 : 0);
    const percent = total ? Math.floor((100 * done) / total) : (b.status === "done" ? 100 : 0);
    $("bc-line").textContent = fill(S["staff.bc.progress_line"], { done, total, percent });
    for (const name of ["sent", "failed", "unreachable", "left"]) $("st-" + name).textContent = String(b[name] || 0);
    $("st-rate").textContent = fill(S["staff.bc.rate_value"], { rate: (b.rate || 0).toFixed(1) });
    $("st-eta").textContent = FINISHED.includes(b.status) ? "-" : eta(b.eta_seconds);
    const rows = $("channel-rows");
    rows.replaceChildren();
    for (const channel of CHANNELS) {
      const c = (b.by_channel || {})[channel];
      if (!c) continue;
      const row = el("tr", {}, el("td", { textContent: channelName(channel) }),
        ...["recipients", "sent", "failed", "unreachable", "left"].map(
          (name) => el("td", { className: "num", textContent: String(c[name] || 0) })));
      row.dataset.channel = channel;
      rows.append(row);
    }
    $("start").hidden = b.status !== "draft";
    $("pause").hidden = !["running", "scheduled"].includes(b.status);
    $("resume").hidden = b.status !== "paused";
    $("cancel").hidden = FINISHED.includes(b.status);
    const report = $("report");
    report.hidden = b.status !== "done" && b.status !== "cancelled";
    report.href = `/staff/api/broadcasts/${b.id}/report.csv`;
    report.setAttribute("download", `broadcast-${b.id}.csv`);
  }

  async function poll() {
    if (view.watching === null) return;
    const id = view.watching;
    try {
      const b = await api("GET", `/staff/api/broadcasts/${id}`);
      if (view.watching !== id) return;
      render(b);
      if (b.status !== view.lastStatus) {
        view.lastStatus = b.status;
        loadRecent().catch(showError);
      }
      if (FINISHED.includes(b.status)) return;
    } catch (error) {
      showError(error);
    }
    if (view.watching === id) view.timer = setTimeout(poll, 1000);
  }

  async function watch(id) {
    clearTimeout(view.timer);
    view.watching = id;
    view.lastStatus = null;
    await poll();
  }

  async function act(action) {
    if (view.watching === null) return;
    showError(null);
    try {
      render(await api("POST", `/staff/api/broadcasts/${view.watching}/${action}`));
    } catch (error) {
      showError(error);
    }
    await watch(view.watching);
  }

  async function loadRecent() {
    const list = await api("GET", "/staff/api/broadcasts");
    const rows = $("recent-rows");
    rows.replaceChildren();
    if (!list.length) {
      rows.append(el("tr", { className: "empty" }, el("td", { colSpan: 6, textContent: S["staff.bc.none_yet"] })));
      return;
    }
    for (const b of list) {
      const row = el("tr", { className: "pick" + (b.id === view.watching ? " selected" : "") },
        el("td", { textContent: `#${b.id}` }), el("td", { textContent: statusName(b.status) }),
        el("td", { textContent: when(b.created_at) }), el("td", { textContent: b.created_by || "" }),
        el("td", { className: "num", textContent: String(b.recipients || 0) }),
        el("td", { className: "num", textContent: String(b.sent || 0) }));
      row.dataset.id = String(b.id);
      row.addEventListener("click", () => {
        for (const r of rows.querySelectorAll("tr.selected")) r.classList.remove("selected");
        row.classList.add("selected");
        watch(b.id).catch(showError);
      });
      rows.append(row);
    }
  }

  // --- wiring ------------------------------------------------------------------------------------------------
  for (const lang of LANGS) {
    $("text-" + lang).addEventListener("input", () => { previewSoon(); composeChanged(); });
  }
  for (const id of ["seg-channel", "seg-lang", "seg-open", "seg-plan", "seg-days", "schedule"]) {
    $(id).addEventListener("input", composeChanged);
    $(id).addEventListener("change", composeChanged);
  }
  $("dry-run").addEventListener("click", () => dryRun().catch(showError));
  $("create-start").addEventListener("click", () => createAndStart().catch(showError));
  $("start").addEventListener("click", () => act("start"));
  $("pause").addEventListener("click", () => act("pause"));
  $("resume").addEventListener("click", () => act("resume"));
  $("cancel").addEventListener("click", () => {
    if (window.confirm(S["staff.bc.cancel_confirm"])) act("cancel");
  });
  $("logout").addEventListener("click", async () => {
    await api("POST", "/staff/logout").catch(() => null);
    window.location.href = "/staff";
  });
  loadPreview().catch(showError);
  loadRecent().catch(showError);
})();
