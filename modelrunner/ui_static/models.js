// Models: the store's models (GET /models), a pull box (POST /models/create, its NDJSON
// progress shown per layer), load and remove (with a confirmation) per model.

import { ApiError, errorOf, json, lines, post, request } from "./api.js";
import { act, bus, bytes, cell, changed, el, fillTable, say, when } from "./fmt.js";

export let models = [];

/** The name ps and the CLI show: the first tag with docker.io/ elided, else the short id. */
export function nameOf(m) {
  return m.tags && m.tags.length ? shortTag(m.tags[0]) : m.id.replace(/^sha256:/, "").slice(0, 12);
}

function shortTag(tag) {
  return tag.replace(/^docker\.io\//, "");
}

function row(m) {
  const name = nameOf(m);
  const c = m.config || {};
  const load = el("button", { type: "button", "aria-label": `Load ${name}` }, "Load");
  load.addEventListener("click", () =>
    act(load, `Load ${name}`, async () => {
      say(`Loading ${name}…`);
      changed("runners");
      await post(`/models/${encodeURI(name)}/load`, {});
      say(`${name} is loaded`);
      changed("runners");
    }),
  );
  const remove = el("button", { type: "button", class: "danger", "aria-label": `Remove ${name}` }, "Remove");
  remove.addEventListener("click", () =>
    act(remove, `Remove ${name}`, async () => {
      if (!window.confirm(`Remove ${name} from the store?`)) return;
      await json(`/models/${encodeURI(name)}`, { method: "DELETE" });
      say(`${name} removed`);
      changed("models");
      changed("runners");
    }),
  );
  return el(
    "tr",
    { "data-model": name },
    el("th", { scope: "row" }, name, ...(m.tags || []).slice(1).map((t) => el("div", { class: "muted" }, shortTag(t)))),
    cell(c.parameters || "—"),
    cell(c.quantization || "—"),
    cell(c.architecture || "—"),
    cell(c.size || "—"),
    cell(when(m.created)),
    cell(el("span", { class: "actions" }, load, remove)),
  );
}

export async function refreshModels() {
  models = await json("/models");
  fillTable("models-body", models.map(row), 7, "No models yet: pull one below.");
  bus.dispatchEvent(new Event("models-listed"));
}

function layerView(box, layers, line) {
  const id = line.layer?.id;
  if (!id || !line.layer.size) return;
  let view = layers.get(id);
  if (!view) {
    const label = el("span", { class: "muted" });
    const bar = el("progress", { max: line.layer.size, value: 0, "aria-label": `Layer ${id.slice(7, 19)}` });
    view = { bar, label };
    layers.set(id, view);
    box.append(el("div", { class: "layer", "data-layer": id }, el("code", {}, id.slice(7, 19)), bar, label));
  }
  view.bar.max = line.layer.size;
  view.bar.value = line.layer.current;
  view.label.textContent = `${bytes(line.layer.current)} / ${bytes(line.layer.size)}`;
}

async function pull(ref) {
  const box = document.getElementById("pull-progress");
  const layers = new Map();
  const message = el("p", {}, `Pulling ${ref}…`);
  box.replaceChildren(message);
  const res = await request("/models/create", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ from: ref }),
  });
  if (!res.ok) throw new ApiError(res.status, await errorOf(res));
  for await (const text of lines(res)) {
    if (!text.trim()) continue;
    const line = JSON.parse(text);
    if (line.type === "progress") {
      layerView(box, layers, line);
      message.textContent = line.message;
    } else if (line.type === "success") {
      message.textContent = line.message;
      box.dataset.done = "success";
    } else if (line.type === "error") {
      throw new ApiError(500, line.message);
    }
  }
}

export function initModels() {
  const form = document.getElementById("pull-form");
  const button = form.querySelector("button");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const ref = form.elements.ref.value.trim();
    if (!ref) return;
    act(button, `Pull ${ref}`, async () => {
      try {
        await pull(ref);
        say(`${ref} pulled`);
      } finally {
        changed("models");
      }
    });
  });
  bus.addEventListener("models", () => refreshModels().catch((e) => say(`Models: ${e.message}`, true)));
}
