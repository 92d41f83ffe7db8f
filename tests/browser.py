"""Headless Chromium for the browser tests: Debian's package (installed by .ci/run), with the flags this closed
network needs (no background networking, no component updates)."""
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def playwright_or_skip():
    """Playwright's sync API; skips the calling test module when Chromium or Playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")
