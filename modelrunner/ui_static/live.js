// Live: GET /engines/events (server-sent events, read with fetch so the API key goes along)
// when the daemon has it; polling /engines/ps every second when it answers 404 or drops.
// The last requests come from GET /engines/requests when the daemon keeps a request log.

import { request, sse } from "./api.js";
import { changed, el } from "./fmt.js";

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

/** The message of a record's error (JSON in either route family's shape, or text). */
function errorText(error) {
  try {
    const body = JSON.parse(error);
    const inner = body.error ?? body;
    return String(inner.message ?? inner);
  } catch {
    return String(error);
  }
}

/** A route as read at a glance: /engines/v1/chat/completions is /v1/chat/completions. */
function route(r) {
  const url = (r.url || "").replace(/^\/engines(\/llama\.cpp)?(?=\/)/, "");
  return r.method && r.method !== "POST" ? `${r.method} ${url}` : url;
}

/** One line per request: when, status, model, route and the answer's text (the daemon's
 * `answer`, the same for every API family), each cut with … and whole in its title. */
function requestRow(r) {
  const failed = Boolean(r.error) || r.status_code >= 400;
  const status = r.status_code || (r.error ? "error" : "…");
  const answer = r.error ? `error: ${errorText(r.error)}` : (r.answer ?? r.response ?? "");
  const time = stamp(r.timestamp);
  return el(
    "tr",
    { "data-url": r.url || "", "data-status": String(status) },
    line(time ? time.toLocaleTimeString() : "—", time ? time.toLocaleString() : ""), // the date: in the title
    line(String(status), "", failed ? "status-error" : null),
    line(r.model || "—"),
    line(route(r), `${r.method || ""} ${r.url || ""}`.trim()),
    line(answer.replace(/\s+/g, " ").trim(), `${r.model || ""} ${route(r)}\n${answer}`, "answer"),
  );
}

/** A record's time: seconds since the epoch (Docker's) or RFC 3339; null without one. */
function stamp(t) {
  if (!t) return null;
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

function line(text, title = text, cls = null) {
  return el("td", { title: title || null, class: cls }, text);
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
    // Newest first: each model's records come oldest first, and several share a second.
    const records = (Array.isArray(groups) ? groups : [])
      .flatMap((g) => (g.records || []).map((r) => ({ model: g.model, ...r })))
      .reverse()
      .sort((a, b) => (stamp(b.timestamp)?.getTime() ?? 0) - (stamp(a.timestamp)?.getTime() ?? 0))
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
