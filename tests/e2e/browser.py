"""A real headless Chromium for the browser tests, driven by Playwright.

Playwright cannot download its own browsers on these machines: the tests use Debian's
``chromium``. A fresh machine (CI) does not have it, so the first browser test of a
session installs it with apt-get when it can (root, apt-get present), once; otherwise
the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Screenshots of the browser tests (gitignored, like everything under build/).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"

_APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
_APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-qq"]


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_APT, *args],
        env=_APT_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ensure_chromium() -> str | None:
    """None when /usr/bin/chromium is there (installing it if we may), else why not."""
    if CHROMIUM.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)"
    try:
        done = _apt("install", "chromium", timeout=900)
        if done.returncode != 0:  # a fresh machine may have no package lists yet
            _apt("update", timeout=300)
            done = _apt("install", "chromium", timeout=900)
    except subprocess.TimeoutExpired:
        return "apt-get install chromium took too long"
    if done.returncode != 0 or not CHROMIUM.exists():
        return f"apt-get install chromium failed: {(done.stderr or done.stdout)[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The path of a Chromium this session can drive (installed on first use)."""
    pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    reason = ensure_chromium()
    if reason is not None:
        pytest.skip(reason)
    return str(CHROMIUM)


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    """One headless Chromium for the session (each test opens its own context)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()
