// Chat: one conversation with a model of the store, streamed from
// POST /engines/v1/chat/completions (fetch + ReadableStream), stopped with an AbortController.

import { ApiError, errorOf, request, sse } from "./api.js";
import { bus, changed, el, say } from "./fmt.js";
import { models, nameOf } from "./models.js";

let history = []; // {role, content} of the conversation so far
let controller = null;

function bubble(role, text) {
  const node = el("div", { class: `msg msg-${role}` }, el("strong", {}, role === "user" ? "You" : role), el("p", {}, text));
  document.getElementById("chat-log").append(node);
  return node.querySelector("p");
}

function fillModels() {
  for (const id of ["chat-model", "log-model"]) {
    const select = document.getElementById(id);
    const current = select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: nameOf(m) }, nameOf(m))));
    if (models.some((m) => nameOf(m) === current)) select.value = current;
  }
}

function stats(usage, chunks, firstAt, endAt, timings) {
  const completion = usage?.completion_tokens ?? chunks;
  const seconds = firstAt && endAt > firstAt ? (endAt - firstAt) / 1000 : 0;
  // llama-server's own measure when it sends one; else tokens after the first over the time since.
  const perSecond = timings?.predicted_per_second ?? (seconds && completion > 1 ? (completion - 1) / seconds : null);
  const rate = perSecond != null ? perSecond.toFixed(1) : "—";
  const prompt = usage?.prompt_tokens != null ? `${usage.prompt_tokens} prompt · ` : "";
  return `${prompt}${completion} completion token${completion === 1 ? "" : "s"} · ${rate} tokens/s`;
}

async function send(form) {
  const text = form.elements.message.value.trim();
  const model = form.elements.model.value;
  if (!text || !model) return;
  const system = form.elements.system.value.trim();
  history.push({ role: "user", content: text });
  bubble("user", text);
  form.elements.message.value = "";
  const out = bubble("assistant", "");
  out.setAttribute("aria-busy", "true");
  const body = {
    model,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(form.elements.temperature.value),
    max_tokens: Number(form.elements.max_tokens.value),
  };
  controller = new AbortController();
  setBusy(true);
  const statsLine = document.getElementById("chat-stats");
  statsLine.textContent = "Waiting for the model…";
  changed("runners");
  let usage = null;
  let timings = null;
  let chunks = 0;
  let firstAt = 0;
  let answer = "";
  try {
    const res = await request("/engines/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!res.ok) throw new ApiError(res.status, await errorOf(res));
    for await (const { data } of sse(res)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || String(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      if (chunk.timings) timings = chunk.timings;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        if (!firstAt) firstAt = performance.now();
        chunks++;
        answer += delta;
        out.textContent = answer;
        statsLine.textContent = stats(null, chunks, firstAt, performance.now());
      }
    }
    statsLine.textContent = stats(usage, chunks, firstAt, performance.now(), timings);
  } catch (e) {
    if (e.name === "AbortError") {
      statsLine.textContent = `Stopped · ${stats(null, chunks, firstAt, performance.now())}`;
    } else {
      say(`Chat: ${e.message}`, true);
      statsLine.textContent = "";
    }
  } finally {
    out.removeAttribute("aria-busy");
    history.push({ role: "assistant", content: answer });
    controller = null;
    setBusy(false);
    changed("runners");
  }
}

function setBusy(busy) {
  document.getElementById("chat-send").disabled = busy;
  document.getElementById("chat-stop").disabled = !busy;
}

export function initChat() {
  const form = document.getElementById("chat-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!controller) send(form);
  });
  form.elements.message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  document.getElementById("chat-stop").addEventListener("click", () => controller?.abort());
  document.getElementById("chat-clear").addEventListener("click", () => {
    controller?.abort();
    history = [];
    document.getElementById("chat-log").replaceChildren();
    document.getElementById("chat-stats").textContent = "";
  });
  bus.addEventListener("models-listed", fillModels);
}
