// The guard's dashboard: renders the snapshots the api pushes over Server-Sent Events, and closes by hand.
"use strict";

const STREAM_URL = "/api/v1/dashboard/stream";
const CLOSE_URL = "/api/v1/monitoring/emergency-close-position";
const SILENCE_MS = 4000; // snapshots come every second: this long without one means the link is gone
const RETRY_MS = 1000;
const LAYERS = {
  live: ["1", "Layer 1 · live prices"],
  fallback: ["1", "Layer 1 · live, catching up"],
  fresh_cache: ["2", "Layer 2 · WebSocket down, fresh cached prices"],
  stale_cache: ["2", "Layer 2 · WebSocket down, stale cached prices"],
  expired: ["3", "Layer 3 · cache expired: close by hand"],
};

const $ = (selector) => document.querySelector(selector);
let lastSnapshotAt = 0;
let apiKeyRequired = false;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function rupees(value) {
  return value === null || value === undefined ? "–" : "₹" + Number(value).toFixed(2);
}

function ist(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString("en-GB", { timeZone: "Asia/Kolkata", hour12: false });
}

function percent(value) {
  return value === null ? "–" : (value >= 0 ? "+" : "") + value.toFixed(2) + " %";
}

// --- the link to the api ----------------------------------------------------------------------

function setLink(up) {
  const pill = $("#api-link");
  pill.dataset.state = up ? "live" : "lost";
  pill.className = "pill " + (up ? "up" : "lost");
  pill.textContent = up ? "api connected" : "api connection lost";
  $("#lost-banner").hidden = up;
  document.body.classList.toggle("offline", !up);
  if (!up) document.title = "⚠ api connection lost · Upstox guard";
}

function onEvent(kind, data) {
  lastSnapshotAt = Date.now();
  setLink(true);
  if (kind === "snapshot") {
    $("#redis-banner").hidden = true;
    render(JSON.parse(data));
  } else if (kind === "unavailable") {
    const banner = $("#redis-banner");
    banner.textContent = JSON.parse(data).detail;
    banner.hidden = false;
  }
}

// The Server-Sent Events stream read with fetch (EventSource cannot send the API key a private api needs).
async function connect() {
  const key = sessionStorage.getItem("apiKey");
  try {
    const response = await fetch(STREAM_URL, { headers: key ? { "X-API-Key": key } : {}, cache: "no-store" });
    $("#key-banner").hidden = response.status !== 401;
    if (!response.ok) throw new Error("HTTP " + response.status);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(kind, data.join("\n"));
      }
    }
  } catch (error) {
    // connection refused, reset, or an error answer: fall through and retry
  }
  setLink(false);
  setTimeout(connect, RETRY_MS);
}

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem("apiKey", $("#key-input").value);
  $("#api-key").value = $("#key-input").value;
  $("#key-banner").hidden = true;
}

setInterval(() => {
  if (lastSnapshotAt && Date.now() - lastSnapshotAt > SILENCE_MS) setLink(false);
}, 1000);

// --- rendering --------------------------------------------------------------------------------

function render(snap) {
  const health = snap.health;
  const ws = health.websocket;
  const cache = health.price_cache;
  apiKeyRequired = snap.api_key_required;
  $("#updated").textContent = "updated " + ist(snap.at) + " IST";

  const [layer, title] = LAYERS[health.advice_branch] || ["", health.advice_branch];
  const banner = $("#layer-banner");
  banner.dataset.layer = layer;
  $("#layer-title").textContent = title;
  $("#advice").textContent = health.advice;
  document.title = (layer === "1" ? "" : "⚠ ") + title + " · Upstox guard"; // a background tab shows trouble

  const connected = $("#ws-connected");
  connected.textContent = ws.connected ? "true" : "false";
  connected.className = ws.connected ? "fresh" : "expired";
  $("#ws-state").textContent = ws.state;
  $("#ws-attempts").textContent = ws.reconnect_attempts;
  const down = snap.feed.outage_started_at;
  $("#ws-down-for").textContent = ws.connected || !down ? "–" : Math.round(snap.at - down) + " s";
  const next = snap.feed.next_retry_at;
  $("#ws-next-retry").textContent = ws.connected || !next ? "–" : "in " + Math.max(0, next - snap.at).toFixed(1) + " s";
  $("#ws-errors").textContent = ws.network_errors;
  $("#ws-quiet").textContent =
    ws.seconds_since_last_message === null ? "never" : ws.seconds_since_last_message.toFixed(1) + " s ago";
  $("#ws-subscribed").textContent = ws.subscribed_symbols;
  $("#ws-last-error").textContent = ws.last_error || "none";
  $("#feed-alive").textContent = ws.feed_alive ? "alive" : "not running";
  $("#dns-resolver").textContent = snap.feed.resolver || "–";
  $("#dns-address").textContent = snap.feed.address || "–";
  $("#count-fresh").textContent = cache.open_positions.fresh;
  $("#count-stale").textContent = cache.open_positions.stale;
  $("#count-expired").textContent = cache.open_positions.expired;
  $("#cached-symbols").textContent = cache.cached_symbols;

  renderServices(snap.services);
  renderPositions(snap.positions, cache.cache_entries, ws.connected);
  renderCloses(snap.closes);
  renderEvents(snap.events);
}

function renderPositions(positions, entries, connected) {
  const body = $("#positions tbody");
  body.replaceChildren();
  $("#no-positions").hidden = positions.length > 0;
  for (const p of positions) {
    const entry = entries[p.symbol] || { status: "expired", age_seconds: null, price: null };
    const price = entry.price;
    const long = p.side === "long";
    const toSl = price === null || p.stop_loss === null ? null : ((long ? price - p.stop_loss : p.stop_loss - price) / price) * 100;
    const toTp = price === null || p.take_profit === null ? null : ((long ? p.take_profit - price : price - p.take_profit) / price) * 100;
    const layer = entry.status === "expired" ? "manual" : connected && entry.status === "fresh" ? "live" : "cached";
    const row = el("tr");
    row.dataset.symbol = p.symbol;
    row.dataset.state = p.state;
    const age = entry.age_seconds === null ? "expired" : entry.age_seconds + " s";
    const cells = [
      el("td", p.symbol, "symbol"), el("td", p.side), el("td", p.quantity), el("td", rupees(p.entry_price)),
      el("td", rupees(p.stop_loss)), el("td", rupees(p.take_profit)), el("td", rupees(price)),
      el("td", age + " · " + entry.status, "age " + entry.status), el("td", percent(toSl)), el("td", percent(toTp)),
      el("td", layer, "layer " + layer), el("td", p.safety_net || "none"),
      el("td", p.state + (p.last_error ? " · close failed" : ""), p.last_error ? "state expired" : "state"),
    ];
    if (p.last_error) cells[12].title = p.last_error; // why the last close failed
    const action = el("td");
    if (p.state === "open") {
      const button = el("button", "Close…", "danger close");
      button.type = "button";
      button.addEventListener("click", () => openDialog(p.symbol));
      action.append(button);
    }
    row.append(...cells, action);
    body.append(row);
  }
}

function renderServices(services) {
  const list = $("#services");
  list.replaceChildren();
  for (const [name, s] of Object.entries(services)) {
    const state = s.alive ? "running" : "NOT RUNNING";
    const dd = el("dd", state, s.alive ? "fresh" : "expired");
    dd.id = "service-" + name;
    if (s.heartbeat_age_s !== null) dd.title = "last heartbeat " + s.heartbeat_age_s + " s ago";
    list.append(el("dt", name), dd);
  }
  $("#monitor-banner").hidden = !services.monitor || services.monitor.alive;
}

function renderCloses(closes) {
  const body = $("#closes tbody");
  body.replaceChildren();
  for (const c of closes) {
    const row = el("tr");
    row.dataset.symbol = c.symbol;
    row.append(
      el("td", c.closed_at.slice(11, 19)), el("td", c.symbol), el("td", rupees(c.exit_price)),
      el("td", rupees(c.pnl), c.pnl < 0 ? "expired" : "fresh"),
      el("td", c.remaining ? c.reason + " (part, " + c.remaining + " left)" : c.reason), el("td", c.closed_by),
      el("td", c.price_source),
    );
    body.append(row);
  }
}

function renderEvents(events) {
  const list = $("#events");
  list.replaceChildren();
  for (const e of events) {
    const r = e.record || e.part; // a close, or the part a close sold before it was reopened for the rest
    const part = r && r.remaining ? ", " + r.quantity + " sold, " + r.remaining + " left" : "";
    const closed = r ? r.reason + " by " + r.closed_by + " at " + rupees(r.exit_price) + " (" + r.price_source + " price)" + part : "";
    const feed = e.kind === "feed_state" ? e.previous + " → " + e.state + (e.reason ? " (" + e.reason + ")" : "") : "";
    const detail = closed || feed || e.message || e.error || [e.reason, e.by].filter(Boolean).join(" by ");
    const text = [e.symbol, detail].filter(Boolean).join(": ");
    const item = el("li");
    item.append(el("time", ist(e.at)), el("strong", " " + e.kind + " "), el("span", text));
    list.append(item);
  }
}

// --- the emergency close ----------------------------------------------------------------------

function openDialog(symbol) {
  $("#close-symbol").textContent = symbol;
  $("#close-error").textContent = "";
  $("#api-key-label").hidden = !apiKeyRequired;
  $("#close-confirm").disabled = false;
  $("#close-dialog").showModal();
}

async function confirmClose(event) {
  event.preventDefault();
  const symbol = $("#close-symbol").textContent;
  const headers = { "Content-Type": "application/json", "Idempotency-Key": "dashboard-" + Date.now() + "-" + Math.random().toString(36).slice(2) };
  const key = $("#api-key").value || sessionStorage.getItem("apiKey");
  if (apiKeyRequired && key) headers["X-API-Key"] = key;
  $("#close-confirm").disabled = true;
  try {
    const response = await fetch(CLOSE_URL, {
      method: "POST",
      headers,
      body: JSON.stringify({ symbol, reason: $("#close-reason").value }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      $("#close-error").textContent = "HTTP " + response.status + ": " + (body.message || body.detail || "failed");
      $("#close-confirm").disabled = false;
      return;
    }
    $("#close-dialog").close();
    $("#notice").textContent = body.message || symbol + ": " + body.status;
  } catch (error) {
    $("#close-error").textContent = "The api did not answer: " + error.message + ". The position may still be open.";
    $("#close-confirm").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#close-form").addEventListener("submit", confirmClose);
  $("#close-cancel").addEventListener("click", () => $("#close-dialog").close());
  $("#key-banner").addEventListener("submit", useKey);
  connect();
});
