"""A real headless Chromium for browser tests: Debian's `chromium` driven by Playwright.

The project's setup installs the browser (`make browser`, run by `make test`); Playwright
drives that system binary and never downloads a browser of its own. Where no Chromium can be
installed (not root, no package registry), `chromium_path()` skips the test with a message
saying how to install it. Screenshots go to `ARTIFACTS` (tests/artifacts/, kept out of git).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    """The system Chromium's path; skips the calling test (clearly) when there is none."""
    override = os.environ.get("RAYSIGHT_CHROMIUM")
    found = override or next(filter(None, map(shutil.which, _CANDIDATES)), None)
    if not found:
        pytest.skip("no Chromium on this machine: run `make browser` (apt-get install chromium) "
                    "or set RAYSIGHT_CHROMIUM to a Chromium binary")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[dev]'")
    return found


@contextlib.contextmanager
def chromium(**context_options) -> Iterator:
    """A fresh browser context (its own cookies and session storage) in headless Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=executable,
            headless=True,
            # Root in a container: Chromium's sandbox needs user namespaces it does not get.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            context = browser.new_context(**context_options)
            try:
                yield context
            finally:
                context.close()
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as tests/artifacts/NAME.png and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
