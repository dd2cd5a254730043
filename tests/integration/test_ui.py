"""The dashboard at /ui/ in a real headless Chromium (Debian's, driven by Playwright's async
API), against the real daemon, real llama-server runners and the real test registry.

The page is only a client of the API: these tests act on it as a user would (clicks, a form, a
confirmation) and check the daemon's side with psutil and the API.  The screenshots in docs/ are
written here.  First paint is measured and printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import psutil
import pytest

from scripts.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_daemon import curl

pytestmark = [pytest.mark.llama]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
STATIC = ROOT / "modelrunner" / "ui_static"
MODEL = "test/tiny:latest"  # how ps and the CLI name `test/tiny`
WAIT_MS = 60_000  # a shared 2-core machine: generous
# The page probes these and falls back when they 404 (until the operators issue adds them);
# Chromium logs every 404 fetch as a console error, so exactly those are expected, no others.
OPTIONAL_ROUTES = ("/engines/events", "/engines/requests")
_404 = "Failed to load resource: the server responded with a status of 404"


@dataclass
class Browser:
    page: Any
    errors: list[str] = field(default_factory=list)

    @property
    def unexpected_errors(self) -> list[str]:
        return [
            e
            for e in self.errors
            if not (e.startswith(_404) and any(e.endswith(f"{r})") for r in OPTIONAL_ROUTES))
        ]


@contextlib.asynccontextmanager
async def browser(color_scheme: str = "light", width: int = 1280) -> AsyncIterator[Browser]:
    """One Chromium page; console errors and page exceptions are collected, never ignored."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await chromium.new_page(
                viewport={"width": width, "height": 900}, color_scheme=color_scheme
            )
            b = Browser(page)

            def on_console(message: Any) -> None:
                if message.type == "error":
                    b.errors.append(f"{message.text} ({message.location.get('url')})")

            page.on("console", on_console)
            page.on("pageerror", lambda e: b.errors.append(f"page error: {e}"))
            yield b
        finally:
            await chromium.close()


async def open_dashboard(b: Browser, d: DaemonHandle) -> dict[str, float]:
    """Navigate as a browser does (``/``, Accept: text/html), wait for the first state drawn."""
    await b.page.goto(d.base_url + "/")
    assert b.page.url == d.base_url + "/ui/"  # the browser's / redirects to the dashboard
    await b.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    timing: dict[str, float] = await b.page.evaluate(
        """() => ({
            first_paint_ms: (performance.getEntriesByName('first-contentful-paint')[0] || {})
                .startTime ?? -1,
            dom_content_loaded_ms: performance.getEntriesByType('navigation')[0]
                .domContentLoadedEventEnd,
            state_drawn_ms: Number(document.body.dataset.readyMs),
        })"""
    )
    return timing


async def until_true(page: Any, predicate: str) -> None:
    """Wait (generously) until the page's JS *predicate* holds (an arrow function: the CSP
    forbids evaluating strings)."""
    await page.wait_for_function(f"() => {predicate}", timeout=WAIT_MS)


def report(capsys: pytest.CaptureFixture[str], what: str, value: Any) -> None:
    with capsys.disabled():
        print(f"\n[ui] {what}: {value}")


def get_json(d: DaemonHandle, path: str) -> Any:
    with urllib.request.urlopen(d.base_url + path, timeout=30) as r:
        return json.loads(r.read())


def runner_pid(d: DaemonHandle) -> int:
    (row,) = get_json(d, "/engines/ps")
    pid: int = row["pid"]
    return pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        await asyncio.sleep(0.1)
    return gone(pid)


def chat_from_outside(d: DaemonHandle) -> str:
    """A chat through the real openai package, not the page."""
    oa = openai.OpenAI(base_url=f"{d.base_url}/engines/v1/", api_key="unused", max_retries=0)
    out = oa.chat.completions.create(
        model="test/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return out.model


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf_factory: Any) -> DaemonHandle:
    # An 8192-token context: the Stop step asks for 8000 tokens, seconds even on a fast machine,
    # so the click always lands mid-answer.
    daemon.add_model("test/tiny", tiny_gguf_factory(ctx=8192))
    return daemon


async def test_dashboard_models_runners_chat_unload(
    served: DaemonHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    async with browser() as b:
        page = b.page
        timing = await open_dashboard(b, served)
        report(capsys, "timing, first load (ms after navigation)", timing)
        warm = []
        for _ in range(5):  # warm loads: the browser and the daemon's listener are up
            await page.goto(served.base_url + "/ui/")
            await page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
            warm.append(
                await page.evaluate(
                    "performance.getEntriesByName('first-contentful-paint')[0].startTime"
                )
            )
        report(capsys, "first paint, 5 warm loads (ms)", sorted(warm))
        await page.keyboard.press("Tab")  # the keyboard's first stop: "Skip to content"
        assert await page.evaluate("document.activeElement.className") == "skip"

        # The store's model, with its facts.
        row = page.locator(f'#models-body tr[data-model="{MODEL}"]')
        await row.wait_for(timeout=WAIT_MS)
        assert "llama" in (await row.inner_text())
        await page.evaluate("window.__sameDocument = true")

        # A chat from outside the page: the runner shows up ready, without a reload.
        assert await asyncio.to_thread(chat_from_outside, served)
        ready = page.locator(f'#runners-body tr[data-runner="{MODEL}"][data-state=ready]')
        await ready.wait_for(timeout=WAIT_MS)
        assert await page.evaluate("window.__sameDocument") is True
        assert re.search(r"\d [KMG]B", await ready.inner_text())  # its RSS, read by psutil
        assert await page.locator("#memory-text").inner_text() != ""

        # The chat box streams an answer, with its token counts.
        await page.select_option("#chat-model", MODEL)
        await page.fill("#chat-max-tokens", "12")
        await page.fill("#chat-input", "Say something.")
        await page.keyboard.press("Control+Enter")  # the keyboard path, as a user would
        await until_true(
            page,
            "document.querySelector('#chat-stats').textContent.includes('tokens/s')"
            " && !document.querySelector('#chat-send').disabled",
        )
        answer = await page.locator(".msg-assistant p").last.inner_text()
        assert answer.strip(), "the model's answer streamed into the chat box"
        stats = await page.locator("#chat-stats").inner_text()
        assert "completion token" in stats, stats
        report(capsys, "chat stats shown", stats)

        # Stop cuts a long answer short (the page's AbortController); the runner goes idle.
        await page.fill("#chat-max-tokens", "8000")
        await page.fill("#chat-input", "Go on, at length.")
        await page.click("#chat-send")
        await until_true(
            page, "[...document.querySelectorAll('.msg-assistant p')].pop().textContent.length"
        )
        await page.click("#chat-stop")
        await until_true(
            page, "document.querySelector('#chat-stats').textContent.startsWith('Stopped')"
        )
        deadline = time.monotonic() + 30
        while get_json(served, "/engines/ps")[0]["in_flight"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert get_json(served, "/engines/ps")[0]["in_flight"] == 0

        # Every control has a name (a label, aria-label or its text).
        unlabelled = await page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                             && !e.textContent.trim())
                .map(e => e.id || e.outerHTML.slice(0, 80))"""
        )
        assert unlabelled == []

        await page.click("#log-daemon")
        await until_true(page, "document.querySelector('#log-text').textContent.includes('daemon')")
        await page.click("#log-runner")
        await until_true(page, "document.querySelector('#log-text').textContent.length > 0")

        await page.screenshot(path=str(DOCS / "ui-dashboard.png"), full_page=True)
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=str(DOCS / "ui-dashboard-dark.png"), full_page=True)
        await page.emulate_media(color_scheme="light")

        # Unload from the page stops the llama-server process.
        pid = runner_pid(served)
        assert not gone(pid)
        await page.click(f'button[aria-label="Unload {MODEL}"]')
        await page.locator(f'#runners-body tr[data-runner="{MODEL}"]').wait_for(
            state="detached", timeout=WAIT_MS
        )
        assert await wait_gone(pid), f"runner {pid} still alive after the page's unload"
        assert get_json(served, "/engines/ps") == []
        assert b.unexpected_errors == []
    report(capsys, "test time, browser part (s)", round(time.monotonic() - started, 2))


async def test_dashboard_pull_shows_progress_then_the_model(
    daemon: DaemonHandle, registry: Any, tiny_gguf: Path
) -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed")
    ref = f"{registry.host}/ui/tiny:v1"
    await asyncio.to_thread(daemon.add_model, ref, tiny_gguf)  # off the loop: it reads files
    status, text = await asyncio.to_thread(
        curl, daemon, "POST", f"/models/{ref}/push", None, ("Accept: application/json",)
    )
    assert status == 200, text
    async with browser() as b:
        page = b.page
        await open_dashboard(b, daemon)
        row = page.locator(f'#models-body tr[data-model="{ref}"]')
        await row.wait_for(timeout=WAIT_MS)

        # Remove asks first: a dismissed confirmation keeps the model, an accepted one removes it.
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
        await page.click(f'button[aria-label="Remove {ref}"]')
        await asyncio.sleep(0.5)
        assert [m["tags"] for m in get_json(daemon, "/models")] == [[ref]]
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.click(f'button[aria-label="Remove {ref}"]')
        await row.wait_for(state="detached", timeout=WAIT_MS)
        assert get_json(daemon, "/models") == []

        await page.fill("#pull-ref", ref)
        await page.click("#pull-form button")
        await page.wait_for_selector("#pull-progress[data-done=success]", timeout=WAIT_MS)
        bars = await page.eval_on_selector_all(
            "#pull-progress progress", "ps => ps.map(p => [p.value, p.max])"
        )
        assert bars, "a progress bar per layer"
        assert all(value == total and total > 0 for value, total in bars), bars
        await row.wait_for(timeout=WAIT_MS)
        await page.screenshot(path=str(DOCS / "ui-pull.png"), full_page=False)
        assert b.unexpected_errors == []

        # A pull that fails says why, in the status line (Chromium logs the 404 fetch itself).
        await page.fill("#pull-ref", f"{registry.host}/no/such:1")
        await page.click("#pull-form button")
        status = page.locator("#status.error")
        await status.wait_for(timeout=WAIT_MS)
        assert "no/such" in await status.inner_text()


def _served_names() -> list[str]:
    return sorted(p.name for p in STATIC.iterdir() if p.is_file())


def test_static_files_are_small_and_self_contained(capsys: pytest.CaptureFixture[str]) -> None:
    total = sum((STATIC / n).stat().st_size for n in _served_names())
    report(capsys, "dashboard size (bytes)", total)
    assert total < 150 * 1024
    for name in _served_names():
        text = (STATIC / name).read_text()
        assert "http://" not in text, f"{name} loads from elsewhere"
        assert "https://" not in text, f"{name} loads from elsewhere"


def test_routes_redirect_headers_and_errors(served: DaemonHandle) -> None:
    # The socket and TCP both serve the page; only a browser's / is redirected.
    status, text = curl(served, "GET", "/ui/")
    assert status == 200
    assert "<title>modelrunner</title>" in text
    assert curl(served, "GET", "/") == (200, "Docker Model Runner is running")
    status, _ = curl(served, "GET", "/", headers=("Accept: text/html,application/xhtml+xml",))
    assert status == 302
    for name in _served_names():
        with urllib.request.urlopen(f"{served.base_url}/ui/{name}", timeout=30) as r:
            assert r.status == 200
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            if name.endswith(".js"):
                assert r.headers["Content-Type"].startswith("text/javascript")
    for bad in ("/ui/nope.js", "/ui/..%2Fconfig.yaml", "/ui/.hidden.js", "/ui/INDEX.HTML"):
        status, text = curl(served, "GET", bad)
        assert status == 404, (bad, text)
        assert "error" in json.loads(text)
    status, _ = curl(served, "GET", "/ui")
    assert status == 308

    # The page's own POSTs carry Origin: the daemon's own origin passes, another is refused.
    def post_with_origin(origin: str) -> int:
        req = urllib.request.Request(
            f"{served.base_url}/engines/unload",
            data=b"{}",
            method="POST",
            headers={"Origin": origin, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert post_with_origin(served.base_url) == 200
    assert post_with_origin("http://evil.example") == 403
    df = get_json(served, "/engines/df")
    assert df["memory_total_bytes"] == psutil.virtual_memory().total
    assert df["memory_budget_bytes"] is None  # no runners.memory_fraction


def _has_api_keys() -> bool:
    from modelrunner.config import ServerConfig

    return "api_keys" in {f.name for f in fields(ServerConfig)}


async def test_dashboard_asks_for_an_api_key_once(daemon_factory: Any, tiny_gguf: Path) -> None:
    """With server.api_keys (the operators issue), the page asks once and keeps the key."""
    if not _has_api_keys():
        pytest.skip("this daemon has no server.api_keys yet")
    d = daemon_factory(server={"api_keys": ["ui-secret-key"]})
    await asyncio.to_thread(d.add_model, "test/tiny", tiny_gguf)
    async with browser() as b:
        page = b.page
        await page.goto(d.base_url + "/ui/")
        await page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
        await page.fill("#key-input", "ui-secret-key")
        await page.click("#key-dialog button[value=ok]")
        await page.locator(f'#models-body tr[data-model="{MODEL}"]').wait_for(timeout=WAIT_MS)
        assert await page.evaluate("localStorage.getItem('modelrunner.apiKey')") == "ui-secret-key"
        await page.reload()
        await page.locator(f'#models-body tr[data-model="{MODEL}"]').wait_for(timeout=WAIT_MS)
        assert not await page.locator("#key-dialog[open]").count()
        # The browser's 401s before the key are expected; nothing else may fail.
        assert [e for e in b.unexpected_errors if "401" not in e] == []


UPPER = "ai/tiny:270M-Q4_K_M"  # a tag with upper case: every table names it as stored

# Measured in the page: the width it needs, and each "Last requests" row's height against one
# line of its text (a row that wraps is two or three lines tall).
LAYOUT = """() => {
    const rows = [...document.querySelectorAll('#requests-body tr')];
    const td = document.querySelector('#requests-body td');
    const line = parseFloat(getComputedStyle(td).lineHeight);
    const box = document.querySelector('#requests-body').closest('table').parentElement;
    return {
        width: window.innerWidth,
        scroll_width: document.documentElement.scrollWidth,
        line_px: line,
        row_px: rows.map(r => r.getBoundingClientRect().height),
        list_px: box.getBoundingClientRect().height,
        rem_px: parseFloat(getComputedStyle(document.documentElement).fontSize),
    };
}"""


def ask_from_outside(d: DaemonHandle, chats: int) -> dict[str, str]:
    """*chats* OpenAI chats, then an Anthropic message and an Ollama chat (the real packages):
    the text each family's client got, by route."""
    user = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=f"{d.base_url}/engines/v1/", api_key="unused", max_retries=0) as oa:
        for _ in range(chats):
            oa.chat.completions.create(model=UPPER, messages=user, max_tokens=6)  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=d.base_url, api_key="unused", max_retries=0) as ac:
        m = ac.messages.create(model=UPPER, max_tokens=6, messages=user)  # type: ignore[arg-type]
    oc = ollama.Client(host=d.base_url)
    try:
        chat = oc.chat(model=UPPER, messages=user, options={"num_predict": 6})
    finally:
        oc.close()
    said = {
        "/v1/messages": "".join(b.text for b in m.content if b.type == "text"),
        "/api/chat": chat.message.content or "",
    }
    return {url: " ".join(text.split()) for url, text in said.items()}


@pytest.mark.parametrize(
    ("width", "scheme"), [(1280, "light"), (1280, "dark"), (420, "light"), (420, "dark")]
)
async def test_dashboard_fits_the_window_and_keeps_requests_compact(
    daemon: DaemonHandle, tiny_gguf: Path, width: int, scheme: str
) -> None:
    """Wide and narrow, light and dark: the page is never wider than the window (its tables
    scroll in their own box or become cards), each of the last requests is one line in a
    bounded list and shows the answer's text for every API family (not Anthropic's or Ollama's
    JSON), and the models and runners tables name the model as stored.  The screenshots in
    docs/ (ui-wide-light.png, ui-narrow-dark.png, …) are written here."""
    await asyncio.to_thread(daemon.add_model, UPPER, tiny_gguf)
    said = await asyncio.to_thread(ask_from_outside, daemon, 10)  # more than the list shows
    async with browser(scheme, width) as b:
        page = b.page
        await open_dashboard(b, daemon)
        await page.locator(f'#runners-body tr[data-runner="{UPPER}"][data-state=ready]').wait_for(
            timeout=WAIT_MS
        )
        assert await page.locator(f'#models-body tr[data-model="{UPPER}"]').count() == 1
        await until_true(page, "document.querySelectorAll('#requests-body tr').length >= 10")
        layout = await page.evaluate(LAYOUT)
        name = "wide" if width > 800 else "narrow"
        await page.screenshot(path=str(DOCS / f"ui-{name}-{scheme}.png"), full_page=True)

        assert layout["width"] == width
        assert layout["scroll_width"] <= width, layout  # no sideways scrolling of the page
        assert all(h < 1.6 * layout["line_px"] for h in layout["row_px"]), layout  # one line
        assert layout["list_px"] <= 16 * layout["rem_px"] + 1, layout  # bounded: it scrolls
        for url, text in said.items():
            cell = page.locator(f'#requests-body tr[data-url="{url}"] td.answer').first
            shown = await cell.get_attribute("title")
            assert shown is not None
            assert " ".join(shown.split("\n", 1)[1].split()) == text, (url, shown)
            assert not (await cell.inner_text()).startswith("{"), url
        assert b.unexpected_errors == []


async def test_dashboard_says_a_key_was_refused(daemon_factory: Any, tiny_gguf: Path) -> None:
    """With server.api_keys, a wrong key re-opens the prompt saying it was refused (the first
    prompt says nothing of the kind); the right key then works.  docs/ui-key-refused.png."""
    d = daemon_factory(server={"api_keys": ["ui-secret-key"]})
    await asyncio.to_thread(d.add_model, "test/tiny", tiny_gguf)
    async with browser() as b:
        page = b.page
        await page.goto(d.base_url + "/ui/")
        await page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
        assert not await page.locator("#key-refused:visible").count()
        await page.fill("#key-input", "not-the-key")
        await page.click("#key-dialog button[value=ok]")
        await page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)  # asked again
        refusal = page.locator("#key-refused")
        assert await refusal.is_visible()
        assert "refused (401)" in await refusal.inner_text()
        await page.screenshot(path=str(DOCS / "ui-key-refused.png"), full_page=False)

        await page.fill("#key-input", "ui-secret-key")
        await page.click("#key-dialog button[value=ok]")
        await page.locator(f'#models-body tr[data-model="{MODEL}"]').wait_for(timeout=WAIT_MS)
        assert await page.evaluate("localStorage.getItem('modelrunner.apiKey')") == "ui-secret-key"
        assert not await page.locator("#key-dialog[open]").count()
        assert [e for e in b.unexpected_errors if "401" not in e] == []
