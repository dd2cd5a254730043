// Runners: GET /engines/ps rows, unload (POST /engines/unload) and pin (POST /engines/_configure,
// then a load, since new settings restart an idle runner), and the memory bar: the budget
// (runners.memory_fraction of RAM, else RAM, from GET /engines/df) against the runners' RSS.

import { json, post } from "./api.js";
import { act, bus, bytes, cell, changed, el, fillTable, say, until } from "./fmt.js";

let memory = null; // {memory_total_bytes, memory_budget_bytes} from /engines/df, read once
export let runners = [];

function row(r) {
  const name = r.model_name;
  const unload = el("button", { type: "button", "aria-label": `Unload ${name}` }, "Unload");
  unload.addEventListener("click", () =>
    act(unload, `Unload ${name}`, async () => {
      const out = await post("/engines/unload", { models: [name] });
      say(out.unloaded_runners ? `${name} unloaded` : `${name} is busy: it stops once idle`);
      changed("runners");
    }),
  );
  const pinLabel = r.pinned ? "Unpin" : "Pin";
  const pin = el("button", { type: "button", "aria-label": `${pinLabel} ${name}`, "aria-pressed": !!r.pinned }, pinLabel);
  pin.addEventListener("click", () =>
    act(pin, `${pinLabel} ${name}`, async () => {
      await post("/engines/_configure", { model: name, pinned: !r.pinned });
      changed("runners");
      await post(`/models/${encodeURI(name)}/load?mode=${encodeURIComponent(r.mode)}`, {});
      say(`${name} ${r.pinned ? "unpinned" : "pinned"}`);
      changed("runners");
    }),
  );
  return el(
    "tr",
    { "data-runner": name, "data-state": r.state },
    el("th", { scope: "row" }, name),
    cell(r.backend_name || "llama.cpp"),
    cell(r.mode),
    cell(el("span", { class: `state state-${r.state}` }, r.state)),
    cell(bytes(r.rss_bytes)),
    cell(String(r.in_flight ?? 0)),
    cell(r.pinned ? "never" : until(r.until)),
    cell(r.pinned ? "yes" : "no"),
    cell(kvCell(r.kv_conversations)),
    cell(el("span", { class: "actions" }, unload, pin)),
  );
}

// The model's conversations kept on disk (runners.kv_cache.conversations): how many, their
// size, and how often one no slot held came back from disk (hits) or was read again (misses).
function kvCell(kv) {
  if (!kv) return "–";
  const text = `${kv.on_disk} conversations, ${bytes(kv.bytes)}`;
  return el("span", { title: `${kv.hits} hits, ${kv.misses} misses since the daemon started` },
    `${text} · ${kv.hits} hits / ${kv.misses} misses`);
}

function drawMemory() {
  const used = runners.reduce((sum, r) => sum + (r.rss_bytes || 0), 0);
  const bar = document.getElementById("memory-bar");
  const text = document.getElementById("memory-text");
  if (!memory || memory.memory_total_bytes == null) {
    text.textContent = `${bytes(used)} used by runners`;
    return;
  }
  const budget = memory.memory_budget_bytes ?? memory.memory_total_bytes;
  const kind = memory.memory_budget_bytes == null ? "of RAM (no memory_fraction set)" : "budget (memory_fraction)";
  bar.max = budget;
  bar.value = Math.min(used, budget);
  bar.high = budget * 0.85;
  bar.optimum = 0;
  text.textContent = `${bytes(used)} of ${bytes(budget)} ${kind}`;
}

let pending = null;
/** Re-read the runners; calls that come while one is in flight share it. */
export function refreshRunners() {
  if (pending) return pending;
  pending = (async () => {
    try {
      if (!memory) {
        // Read once, beside ps (it walks the backend's directory: slower than ps).
        memory = {};
        json("/engines/df")
          .then((df) => {
            memory = df;
            drawMemory();
          })
          .catch(() => {
            memory = null;
          });
      }
      runners = await json("/engines/ps");
      fillTable("runners-body", runners.map(row), 9, "No runner: a model loads on its first request.");
      drawMemory();
      bus.dispatchEvent(new Event("runners-listed"));
    } finally {
      pending = null;
    }
  })();
  return pending;
}

const MIN_GAP_MS = 250; // a burst of events (a pull's progress) makes one read, not hundreds
let timer = null;

export function initRunners() {
  bus.addEventListener("runners", () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      refreshRunners().catch((e) => say(`Runners: ${e.message}`, true));
    }, MIN_GAP_MS);
  });
}
