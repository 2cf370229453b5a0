"""What the browser tests share: Debian's chromium for Playwright, and `hivemind-site serve` started
as a real subprocess on a fresh SQLite database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium); CI always runs these",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_site(workdir: Path, **env_overrides: str) -> Iterator[str]:
    """`hivemind-site serve` on `workdir/site.db` (it migrates, then serves); yields its base URL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HIVEMIND_SITE_SECRET_KEY": "browser-test-secret-" + os.urandom(24).hex(),
        "HIVEMIND_SITE_PUBLIC_URL": base_url,
        "HIVEMIND_SITE_UPLOAD_DIR": str(workdir / "uploads"),
        "HIVEMIND_SITE_MAX_UPLOAD_BYTES": str(1024 * 1024),
        "HIVEMIND_SITE_MONITOR_ENABLED": "false",
        **env_overrides,
    }
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)]
    command += ["--database-url", f"sqlite:///{workdir / 'site.db'}"]
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_site(base_url, process, log_path)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def wait_for_site(base_url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    """Until the site at `base_url` answers its health check; fails with its log if it exits or is late."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the site did not start:\n{log_path.read_text()}")
        time.sleep(0.2)


@contextmanager
def chromium_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
