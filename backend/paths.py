"""Where the site's non-Python files live: `web/` and `migrations/` at the top of a source checkout,
or `backend/web` and `backend/migrations` inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the site's {name}/ directory is missing (looked next to {_PACKAGE_DIR})")


def web_dir() -> Path:
    return resource_dir("web")


def migrations_dir() -> Path:
    return resource_dir("migrations")
