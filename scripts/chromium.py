"""Debian's headless Chromium as the dashboard's tests and its benchmark launch it (Playwright)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"  # Debian's build (make system-deps); Playwright downloads nothing
# No sandbox (root in a container), no GPU, and nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
