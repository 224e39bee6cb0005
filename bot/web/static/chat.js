// The web chat page's behaviour; a file of its own so the CSP can say script-src 'self'.
// Never keeps a typed name or ID number in the clear: bubbles show them masked, and the transcript kept in
// localStorage (to restore both sides on reload) holds only masked copies.
(() => {
  const body = document.body;
  const T = { network: body.dataset.network, retry: body.dataset.retry };
  const log = document.getElementById("log");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const api = "/chat/api/sessions";
  const KEY = { session: "haoqing.session", seq: "haoqing.seq", mine: "haoqing.mine" };
  let session = localStorage.getItem(KEY.session);
  let lastSeq = Number(localStorage.getItem(KEY.seq) || 0);
  let busy = false;
  let expects = "";
  let pageLang = document.documentElement.lang === "en" ? "en" : "zh_CN";

  function newId() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
  }
  function scroll() { log.scrollTop = log.scrollHeight; }
  function disableOldChoices() {
    log.querySelectorAll(".choices button, .date-picker").forEach(b => { b.disabled = true; });
  }

  // Same shapes as domain/masking.py: 1101**********002X, 张**, 138****8000.
  const ID_RE = /(\d{6})(\d{8})(\d{3}[\dXx])|\b\d{15}\b/g;
  function maskIds(text) {
    return text.replace(ID_RE, (m) => m.slice(0, 4) + "*".repeat(m.length - 8) + m.slice(-4));
  }
  function maskPhones(text) {
    return text.replace(/(1[3-9]\d)[\s-]?(\d{4})[\s-]?(\d{4})/g, (m, a, b, c) => a + "****" + c);
  }
  function maskName(text) {
    return text.replace(/[^\s\d,，;；:：Xx*]{2,30}/g, (m) => m[0] + "*".repeat(Math.max(1, m.length - 1)));
  }
  function shownMine(text, wasExpected) {
    let out = maskIds(text);
    if (wasExpected === "name") out = maskName(out);
    return out;
  }

  function loadMine() {
    try { return JSON.parse(localStorage.getItem(KEY.mine) || "[]"); } catch (e) { return []; }
  }
  function keepMine(text, afterSeq) {
    const mine = loadMine();
    mine.push({ after: afterSeq, text: maskPhones(text) });
    localStorage.setItem(KEY.mine, JSON.stringify(mine.slice(-200)));
  }
  function addMine(text) {
    const div = document.createElement("div");
    div.className = "msg me";
    div.textContent = text;
    log.appendChild(div);
    scroll();
  }

  function setExpects(kind) {
    expects = kind || "";
    const numeric = expects === "phone" || expects === "code";
    input.setAttribute("inputmode", numeric ? "numeric" : "text");
    input.setAttribute("autocomplete", expects === "code" ? "one-time-code" : expects === "phone" ? "tel" : "off");
  }

  // The page's own words follow the conversation's language: take them from the page served in that language.
  async function followLang(lang) {
    if (!lang || lang === pageLang) return;
    pageLang = lang;
    try {
      const r = await fetch("/?lang=" + encodeURIComponent(lang));
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const pick = (sel) => doc.querySelector(sel);
      document.documentElement.lang = doc.documentElement.lang;
      document.title = doc.title;
      document.getElementById("title").textContent = pick("#title").textContent;
      document.getElementById("subtitle").textContent = pick("#subtitle").textContent;
      document.getElementById("new-chat").textContent = pick("#new-chat").textContent;
      document.getElementById("send").textContent = pick("#send").textContent;
      input.placeholder = pick("#text").placeholder;
      input.setAttribute("aria-label", pick("#text").placeholder);
      T.network = doc.body.dataset.network;
      T.retry = doc.body.dataset.retry;
    } catch (e) { /* keep the current words; the next message tries again */ pageLang = ""; }
  }

  function addBot(m) {
    if (typeof m.seq === "number") {
      if (m.seq <= lastSeq) return;
      lastSeq = m.seq;
      localStorage.setItem(KEY.seq, String(lastSeq));
    }
    if (m.lang) followLang(m.lang);
    const div = document.createElement("div");
    div.className = "msg bot" + (m.error ? " error" : "");
    div.textContent = m.text;
    if (m.date_picker) {
      const row = document.createElement("div");
      row.className = "choices";
      const picker = document.createElement("input");
      picker.type = "date";
      picker.className = "date-picker";
      const today = new Date();
      picker.min = today.toISOString().slice(0, 10);
      const limit = new Date(today.getTime() + 366 * 86400000);
      picker.max = limit.toISOString().slice(0, 10);
      picker.addEventListener("change", () => { if (picker.value) send({ text: picker.value }, picker.value); });
      row.appendChild(picker);
      div.appendChild(row);
    }
    if (m.choices && m.choices.length) {
      disableOldChoices();
      const row = document.createElement("div");
      row.className = "choices";
      m.choices.forEach((c, i) => {
        const b = document.createElement("button");
        b.type = "button";
        // Typed numbers pick buttons by these numbers; where the text numbers its own items, the labels carry them.
        if (m.numbered !== false) {
          const n = document.createElement("span");
          n.className = "n";
          n.textContent = String(i + 1);
          b.appendChild(n);
        }
        b.appendChild(document.createTextNode(c.label));
        b.dataset.choice = c.id;
        b.addEventListener("click", () => send({ choice: c.id }, c.label));
        row.appendChild(b);
      });
      div.appendChild(row);
    }
    if (!m.error || m.expects) setExpects(m.expects);
    log.appendChild(div);
    scroll();
  }
  function showError(text, retry) {
    const div = document.createElement("div");
    div.className = "inline-error";
    div.setAttribute("role", "alert");
    const span = document.createElement("span");
    span.textContent = text;
    div.appendChild(span);
    if (retry) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = T.retry;
      b.addEventListener("click", () => { div.remove(); retry(); });
      div.appendChild(b);
    }
    log.appendChild(div);
    scroll();
  }
  // The session 新对话 left: the server ends it when the new one starts, so an old tab cannot keep using it.
  let replacing = null;
  async function ensureSession() {
    if (session) return session;
    const opening = { lang: pageLang };
    if (replacing) opening.replaces = replacing;
    const r = await fetch(api, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(opening) });
    replacing = null;
    const j = await r.json();
    session = j.session;
    lastSeq = 0;
    localStorage.setItem(KEY.session, session);
    localStorage.setItem(KEY.seq, "0");
    localStorage.removeItem(KEY.mine);
    return session;
  }
  async function post(payload) {
    const s = await ensureSession();
    const r = await fetch(api + "/" + s + "/messages", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
    const j = await r.json().catch(() => ({}));
    if (r.status === 404) {
      localStorage.removeItem(KEY.session);
      session = null;
    }
    return { ok: r.ok, status: r.status, json: j };
  }
  // The server's proof of work (bot/pow.py), asked for when one address sends many codes: the smallest
  // decimal answer whose SHA-256 of "challenge:answer" starts with `bits` zero bits. Hashed in batches so the
  // page stays responsive; about 2^bits tries on average.
  function zeroBits(bytes) {
    let n = 0;
    for (const b of bytes) {
      if (b === 0) { n += 8; continue; }
      return n + Math.clz32(b) - 24;
    }
    return n;
  }
  async function solvePow(challenge, bits) {
    const enc = new TextEncoder();
    for (let start = 0; ; start += 512) {
      const tries = [];
      for (let i = start; i < start + 512; i++) {
        tries.push(crypto.subtle.digest("SHA-256", enc.encode(challenge + ":" + i)));
      }
      const digests = await Promise.all(tries);
      for (let i = 0; i < digests.length; i++) {
        if (zeroBits(new Uint8Array(digests[i])) >= bits) return String(start + i);
      }
    }
  }
  // One message at a time, in the order they were sent: what is typed or pressed while an answer is still on its
  // way waits its turn instead of being dropped (the input was already cleared: it would be lost).
  let queue = Promise.resolve();
  function send(payload, shown) {
    const turn = queue.then(() => sendNow(payload, shown));
    queue = turn.catch(() => {});
    return turn;
  }
  async function sendNow(payload, shown) {
    busy = true;
    const body = Object.assign({ id: newId() }, payload);
    if (shown) {
      const masked = payload.text !== undefined ? shownMine(shown, expects) : shown;
      addMine(masked);
      keepMine(masked, lastSeq);
    }
    const attempt = async () => {
      try {
        let res = await post(body);
        if (res.status === 429 && res.json.pow && crypto.subtle) {
          const note = (res.json.messages && res.json.messages[0]) || null;
          if (note) addBot(Object.assign({}, note, { error: false, choices: [] }));
          const answer = await solvePow(res.json.pow.challenge, res.json.pow.bits);
          body.id = newId();  // a new delivery: the refused one was never stepped
          body.pow = { challenge: res.json.pow.challenge, answer };
          res = await post(body);
        }
        if (!res.ok) {
          const m = (res.json.messages && res.json.messages[0]) || { text: T.network };
          showError(m.text, res.status >= 500 || res.status === 409 ? attempt : null);
          return;
        }
        for (const m of res.json.messages) addBot(m);
      } catch (e) {
        showError(T.network, attempt);  // same id again: the server answers a repeat once
      } finally {
        busy = false;
      }
    };
    await attempt();
  }
  async function poll() {
    if (!session || busy) return;
    try {
      const r = await fetch(api + "/" + session + "/messages?after=" + lastSeq);
      if (r.ok) {
        const j = await r.json();
        for (const m of j.messages) addBot(m);
      }
    } catch (e) { /* offline: the next poll catches up */ }
  }
  async function restore() {
    if (!session) { await send({ text: "/start" }); return; }
    lastSeq = 0;
    const r = await fetch(api + "/" + session + "/messages?after=0").catch(() => null);
    if (!r || !r.ok) {
      localStorage.removeItem(KEY.session);
      localStorage.removeItem(KEY.mine);
      session = null;
      await send({ text: "/start" });
      return;
    }
    const j = await r.json();
    if (!j.messages.length) { await send({ text: "/start" }); return; }
    // Both sides, in order: each of the user's bubbles goes after the bot message it answered.
    const mine = loadMine();
    let next = 0;
    for (const m of j.messages) {
      while (next < mine.length && mine[next].after < m.seq) addMine(mine[next++].text);
      addBot(m);
    }
    while (next < mine.length) addMine(mine[next++].text);
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    send({ text }, text);
  });
  document.getElementById("new-chat").addEventListener("click", () => {
    replacing = session;
    localStorage.removeItem(KEY.session);
    localStorage.removeItem(KEY.seq);
    localStorage.removeItem(KEY.mine);
    session = null;
    log.textContent = "";
    send({ text: "/start" });
  });
  restore();
  setInterval(poll, 2000);
})();
