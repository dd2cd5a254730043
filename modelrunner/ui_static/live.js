// Live: GET /engines/events (server-sent events, read with fetch so the API key goes along)
// when the daemon has it; polling /engines/ps every second when it answers 404 or drops.
// The last requests come from GET /engines/requests when the daemon keeps a request log.

import { request, sse } from "./api.js";
import { changed, el, when } from "./fmt.js";

const MAX_EVENTS = 50;
const MAX_REQUESTS = 20;
let poller = null;
let requestLog = true; // until /engines/requests answers 404

function mode(text) {
  document.getElementById("live-mode").textContent = text;
}

function startPolling() {
  if (poller) return;
  mode("Polling the daemon every second (it has no /engines/events).");
  poller = setInterval(() => {
    changed("runners");
    refreshRequests();
  }, 1000);
}

function stopPolling() {
  clearInterval(poller);
  poller = null;
}

/** Show one event; its kind (the event's name or its JSON type). */
function showEvent(name, data) {
  let body = data;
  let kind = name;
  try {
    const obj = JSON.parse(data);
    kind = String(obj.type || obj.event || name);
    const what = [obj.model || obj.model_name, obj.state, obj.mode, obj.reason, obj.status, obj.message]
      .filter(Boolean)
      .join(" · ");
    body = `${kind}${what ? `: ${what}` : ""}`;
  } catch {
    /* a non-JSON event: show it as it came */
  }
  if (kind === "requests") return kind; // counters: the request table below shows them
  const list = document.getElementById("events");
  list.prepend(el("li", {}, el("time", {}, new Date().toLocaleTimeString()), " ", body));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  return kind;
}

async function follow() {
  let res;
  try {
    res = await request("/engines/events", { headers: { Accept: "text/event-stream" } });
  } catch {
    res = null;
  }
  if (!res || !res.ok) {
    startPolling();
    if (res && res.status !== 404) setTimeout(follow, 5000); // a hiccup: try the stream again
    return;
  }
  stopPolling();
  mode("Following /engines/events.");
  try {
    for await (const { event, data } of sse(res)) {
      const kind = showEvent(event, data);
      changed("runners");
      if (/pull|push|delete|remove|tag|store/.test(kind)) changed("models");
      refreshRequests();
    }
  } catch {
    /* the stream broke: poll until it is back */
  }
  startPolling();
  setTimeout(follow, 2000);
}

function requestRow(r) {
  const status = r.status_code ?? (r.error ? "error" : "—");
  return el(
    "tr",
    {},
    cell(when(r.timestamp)),
    cell(r.model || "—"),
    cell(`${r.method || ""} ${r.url || ""}`.trim()),
    cell(String(status)),
  );
}

function cell(text) {
  return el("td", {}, text);
}

let requestsPending = false;
export async function refreshRequests() {
  if (!requestLog || requestsPending) return;
  requestsPending = true;
  try {
    const res = await request("/engines/requests", { headers: { Accept: "application/json" } });
    if (res.status === 404) {
      requestLog = false;
      document.getElementById("requests-note").textContent = "This daemon keeps no request log (/engines/requests).";
      return;
    }
    if (!res.ok) return;
    const groups = await res.json();
    const records = (Array.isArray(groups) ? groups : [])
      .flatMap((g) => (g.records || []).map((r) => ({ model: g.model, ...r })))
      .sort((a, b) => (Date.parse(b.timestamp) || b.timestamp || 0) - (Date.parse(a.timestamp) || a.timestamp || 0))
      .slice(0, MAX_REQUESTS);
    document.getElementById("requests-body").replaceChildren(...records.map(requestRow));
  } catch {
    /* shown on the next successful read */
  } finally {
    requestsPending = false;
  }
}

export function initLive() {
  follow();
  refreshRequests();
  // Requests change without runner events (every chat): refresh them on their own too.
  setInterval(refreshRequests, 3000);
}
