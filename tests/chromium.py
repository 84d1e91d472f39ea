"""The one way the browser tests start Debian's chromium (no sandbox, no GPU, no network chatter)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip


def launch(playwright):
    """A headless chromium from a sync_playwright() context."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
