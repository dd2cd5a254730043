// The one door to the daemon: every call goes through request(), so the API key (when the
// daemon asks for one) rides along on all of them. The page has no routes of its own.

const KEY = "modelrunner.apiKey";
const MAX_TRIES = 6; // keys one call may try before it gives its 401 to the caller
let asking = null; // one key prompt at a time, shared by every call that got a 401
let declined = false; // asked once and the user cancelled: stop asking until a reload
let refused = false; // the last key given was refused: the next prompt says so

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function withKey(headers) {
  const h = new Headers(headers || {});
  const key = localStorage.getItem(KEY);
  if (key) h.set("Authorization", `Bearer ${key}`);
  return h;
}

/** Say in the open prompt that the key given was refused (or nothing, the first time). */
function showRefusal() {
  const note = document.getElementById("key-refused");
  note.textContent = refused ? "That key was refused (401) — try again." : "";
  note.hidden = !refused;
}

function askKey() {
  if (declined) return Promise.resolve(false);
  if (asking) {
    showRefusal(); // a call that found the key refused while the prompt was already open
    return asking;
  }
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  showRefusal();
  asking = new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      asking = null;
      refused = false;
      if (ok) localStorage.setItem(KEY, input.value.trim());
      else declined = true;
      input.value = "";
      resolve(ok);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      done(e.submitter?.value !== "cancel" && input.value.trim() !== "");
    };
    const onCancel = (e) => {
      e.preventDefault();
      done(false);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/** fetch() with the stored key; on a 401, ask for a key (saying so when the one sent was
 * refused) and retry with it, until one is accepted or the user cancels. */
export async function request(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const sent = localStorage.getItem(KEY);
    const res = await fetch(path, { ...options, headers: withKey(options.headers) });
    if (res.status !== 401 || attempt >= MAX_TRIES) return res;
    const now = localStorage.getItem(KEY);
    if (now && now !== sent) continue; // a key came while this call was out: just retry with it
    if (sent && now === sent) {
      localStorage.removeItem(KEY); // the daemon refuses it: of no more use
      refused = true;
    }
    if (!(await askKey())) return res;
  }
}

/** The error message of any of the API's shapes: {"error": "…"} or {"error": {"message"}}. */
export async function errorOf(res) {
  const text = await res.text();
  try {
    const body = JSON.parse(text);
    const err = body.error;
    if (typeof err === "string") return err;
    if (err && typeof err.message === "string") return err.message;
  } catch {
    /* not JSON: the text itself */
  }
  return text.trim() || `${res.status} ${res.statusText}`;
}

/** A JSON answer, or ApiError with the route's own message. */
export async function json(path, options = {}) {
  const res = await request(path, options);
  if (!res.ok) throw new ApiError(res.status, await errorOf(res));
  return res.status === 204 || res.status === 202 ? null : res.json();
}

export function post(path, body) {
  return json(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** The text lines of a streamed body, as they arrive. */
export async function* lines(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) yield buffer;
}

/** Server-sent events read with fetch (EventSource cannot send Authorization): {event, data}. */
export async function* sse(res) {
  let event = "message";
  let data = [];
  for await (const line of lines(res)) {
    if (line === "") {
      if (data.length) yield { event, data: data.join("\n") };
      event = "message";
      data = [];
    } else if (line.startsWith("data:")) {
      data.push(line.slice(5).replace(/^ /, ""));
    } else if (line.startsWith("event:")) {
      event = line.slice(6).trim();
    }
  }
  if (data.length) yield { event, data: data.join("\n") };
}
