"""The JavaScript the site ships for pages that work offline: each vendored library keeps its license
and version next to it, the version is the one inside the file, and the site serves it."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings

VENDOR = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor"
# library folder -> (asset files, a pattern that finds the version inside the first asset)
LIBRARIES = {
    "htmx": (["htmx.min.js"], r'version:"([0-9.]+)"'),
    "htmx-ext-ws": (["ws.min.js"], None),  # its build carries no version string
    "uplot": (["uPlot.iife.min.js", "uPlot.min.css"], r"uPlot \(v([0-9.]+)\)"),
}


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_vendored_library_has_its_license_version_and_assets(library):
    folder = VENDOR / library
    assets, version_pattern = LIBRARIES[library]
    assert sorted(path.name for path in folder.iterdir()) == sorted(["LICENSE", "VERSION", *assets])
    version = (folder / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert "Permission" in (folder / "LICENSE").read_text()  # MIT and 0BSD both grant it in words
    if version_pattern is not None:
        match = re.search(version_pattern, (folder / assets[0]).read_text())
        assert match is not None and match.group(1) == version


def test_the_ws_extension_fits_the_vendored_htmx():
    extension = (VENDOR / "htmx-ext-ws" / "ws.min.js").read_text()
    assert 'htmx.defineExtension("ws"' in extension
    assert (VENDOR / "htmx" / "VERSION").read_text().startswith("2.")  # htmx-ext-ws 2.x needs htmx 2


def test_the_site_serves_the_vendored_files(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'site.db'}",
        secret_key=secrets.token_urlsafe(48),
        upload_dir=tmp_path / "uploads",
        monitor_enabled=False,
    )
    with TestClient(create_app(settings)) as client:
        for library, (assets, _) in LIBRARIES.items():
            for asset in assets:
                response = client.get(f"/static/vendor/{library}/{asset}")
                assert response.status_code == 200, asset
                assert response.content == (VENDOR / library / asset).read_bytes()
                kind = "css" if asset.endswith(".css") else "javascript"
                assert kind in response.headers["content-type"]
