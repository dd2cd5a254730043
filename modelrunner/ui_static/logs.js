// Logs: the daemon's log tail (GET /logs) and one runner's log (GET /logs?model=&mode=),
// read on demand; the last lines are shown, scrolled to the end.

import { errorOf, request } from "./api.js";
import { act } from "./fmt.js";

const MAX_LINES = 400;

async function show(path) {
  const pre = document.getElementById("log-text");
  const res = await request(path, { headers: { Accept: "text/plain" } });
  const text = res.ok ? await res.text() : `(${await errorOf(res)})`;
  pre.textContent = text.split("\n").slice(-MAX_LINES).join("\n") || "(empty)";
  pre.scrollTop = pre.scrollHeight;
}

export function initLogs() {
  const daemon = document.getElementById("log-daemon");
  daemon.addEventListener("click", () => act(daemon, "Daemon log", () => show("/logs")));
  const runner = document.getElementById("log-runner");
  runner.addEventListener("click", () =>
    act(runner, "Runner log", () => {
      const model = document.getElementById("log-model").value;
      const mode = document.getElementById("log-mode").value;
      const query = new URLSearchParams({ model, mode });
      return show(`/logs?${query}`);
    }),
  );
}
