// The dashboard's entry point: wires the sections and reads the daemon's state once; Live keeps
// it current (events, or polling). Each section owns its part of the page.

import { json } from "./api.js";
import { changed, say } from "./fmt.js";
import { initChat } from "./chat.js";
import { initLive } from "./live.js";
import { initLogs } from "./logs.js";
import { initModels, refreshModels } from "./models.js";
import { initRunners, refreshRunners } from "./runners.js";

async function main() {
  initModels();
  initRunners();
  initChat();
  initLogs();
  try {
    const v = await json("/version");
    document.getElementById("version").textContent = `v${v.version}`;
  } catch (e) {
    say(`Daemon: ${e.message}`, true);
  }
  await Promise.allSettled([
    refreshModels().catch((e) => say(`Models: ${e.message}`, true)),
    refreshRunners().catch((e) => say(`Runners: ${e.message}`, true)),
  ]);
  initLive();
  // For tests and scripts: the first state is drawn, and how long after navigation it took.
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "true";
}

main();
// The "until" column counts down between refreshes.
setInterval(() => changed("runners"), 15000);
