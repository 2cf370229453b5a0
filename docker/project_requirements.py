"""Print the project's dependencies from pyproject.toml, one requirement a line.

The images install these first, in a layer of their own, so that editing the source does not reinstall
torch: `python docker/project_requirements.py pyproject.toml [EXTRA ...] > requirements.txt`.
"""

from __future__ import annotations

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def requirements(pyproject_path: str, extras: list[str]) -> list[str]:
    with open(pyproject_path, "rb") as file:
        project = tomllib.load(file)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml defines {sorted(optional)}")
    return [*project["dependencies"], *(req for extra in extras for req in optional[extra])]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: project_requirements.py PYPROJECT_TOML [EXTRA ...]")
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
