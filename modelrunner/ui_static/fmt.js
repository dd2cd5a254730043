// Formatting and small DOM helpers shared by the sections (text only: never innerHTML).

export function bytes(n) {
  if (n == null || Number.isNaN(Number(n))) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v < 10 && i > 0 ? 2 : 0)} ${units[i]}`;
}

/** A seconds-since-epoch (or RFC 3339) time as local date and time. */
export function when(t) {
  if (t == null || t === "" || t === 0) return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

/** Time left until a seconds-since-epoch deadline: "4m 10s", or "—". */
export function until(t) {
  if (t == null) return "—";
  const s = Math.max(0, Math.round(t - Date.now() / 1000));
  const m = Math.floor(s / 60);
  return m ? `${m}m ${s % 60}s` : `${s}s`;
}

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, String(v));
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

/** Replace a table body's rows; one muted row saying *empty* when there are none. Each cell
 * gets its column's name as data-label: a narrow window shows the rows as cards, labelled. */
export function fillTable(id, rows, columns, empty) {
  const body = document.getElementById(id);
  const names = [...body.closest("table").querySelectorAll("thead th")].map((th) =>
    th.querySelector(".visually-hidden") ? "" : th.textContent.trim(),
  );
  for (const row of rows) {
    [...row.children].forEach((c, i) => {
      if (c.tagName === "TD" && names[i]) c.dataset.label = names[i];
    });
  }
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "muted" }, empty))]));
}

export function cell(...children) {
  return el("td", {}, ...children);
}

/** Say something in the page's status line (a polite live region). */
export function say(message, isError = false) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

/** Run an action from a button; report its failure in the status line, not the console. */
export async function act(button, label, fn) {
  button.disabled = true;
  try {
    await fn();
  } catch (e) {
    say(`${label}: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

/** A tiny event bus: sections ask each other to refresh ("models", "runners"). */
export const bus = new EventTarget();
export function changed(what) {
  bus.dispatchEvent(new Event(what));
}
