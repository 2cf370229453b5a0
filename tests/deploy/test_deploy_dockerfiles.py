"""docker/Dockerfile.site and docker/Dockerfile.peer, checked without building them (no Docker daemon
here, no registry): what they copy exists and is not ignored, they run as an unprivileged user, the
dependencies are a layer of their own, and their commands are the project's real ones."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from packaging.requirements import Requirement

from backend.app import create_app
from backend.cli import app as site_cli
from backend.migrate import upgrade
from backend.settings import Settings
from peer.cli import app as peer_cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"site": ROOT / "docker" / "Dockerfile.site", "peer": ROOT / "docker" / "Dockerfile.peer"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continued lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
            pending = ""
    assert not pending, f"{path} ends inside a continued line"
    return result


def _all(path: Path, keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions(path) if name == keyword]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"use the exec (JSON) form: {arguments}"
    return value


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` and `?` within one path element, `**` across any number of them."""
    expression = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        expression += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(expression)


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative`, or a folder above it, out of the build context."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#"):
            rules.append((pattern.startswith("!"), _dockerignore_regex(pattern.removeprefix("!"))))
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated  # the last matching rule decides
    return excluded


def test_dockerignore_keeps_local_state_and_secrets_out():
    for path in (".venv/bin/python", ".git/HEAD", ".demo/hivemind-site.db", ".env", "hivemind-site.secret"):
        assert dockerignore_excludes(path), path
    for path in ("peer/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v", "hivemind_platform.egg-info/PKG"):
        assert dockerignore_excludes(path), path
    assert dockerignore_excludes(".demo/peer-alice/identity.key")
    assert not dockerignore_excludes("peer/cli.py")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_everything_copied_exists_and_is_in_the_build_context(image):
    copies = _all(DOCKERFILES[image], "COPY")
    assert copies
    for arguments in copies:
        *sources, _destination = arguments.split()
        for source in sources:
            assert not source.startswith("--"), f"COPY {arguments}: no --from or --chown expected"
            assert (ROOT / source).exists(), f"COPY {arguments}: {source} does not exist"
            assert not dockerignore_excludes(source), f"COPY {arguments}: .dockerignore excludes {source}"
    copied = {source for arguments in copies for source in arguments.split()[:-1]}
    # what `pip install .` needs: the metadata, every package, and what backend/web, backend/migrations
    # (symlinks) point to
    assert {"pyproject.toml", "README.md", "peer", "backend", "web", "migrations"} <= copied


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_runs_as_an_unprivileged_user(image):
    path = DOCKERFILES[image]
    steps = [name for name, _ in instructions(path)]
    users = _all(path, "USER")
    assert users, f"{path.name} has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert steps.index("USER") < steps.index("ENTRYPOINT")
    assert f"--uid {user}" in " ".join(_all(path, "RUN"))  # the user exists, with that uid


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dependencies_are_a_layer_below_the_source(image):
    path = DOCKERFILES[image]
    assert _all(path, "FROM") == ["${PYTHON_IMAGE}"]
    assert any(arg.startswith("PYTHON_IMAGE=python:3.11-slim") for arg in _all(path, "ARG"))
    steps = instructions(path)
    install_deps = next(
        index
        for index, (name, arguments) in enumerate(steps)
        if name == "RUN" and "-r requirements" in arguments
    )
    first_source = next(index for index, step in enumerate(steps) if step == ("COPY", "peer peer"))
    assert install_deps < first_source
    deps_command = steps[install_deps][1]
    assert "-c constraints.txt" in deps_command  # torch==2.13.0, as everywhere else
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in deps_command
    assert any(arg.startswith("TORCH_INDEX_URL=https://") for arg in _all(path, "ARG"))
    copied_before = {steps[index][1].split()[0] for index in range(install_deps) if steps[index][0] == "COPY"}
    assert copied_before <= {"pyproject.toml", "docker/project_requirements.py"}
    assert "/data" in " ".join(_all(path, "VOLUME"))


def test_project_requirements_lists_the_dependencies_of_pyproject():
    script = ROOT / "docker" / "project_requirements.py"
    output = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = output.splitlines()
    assert lines == PYPROJECT["project"]["dependencies"]
    assert {Requirement(line).name for line in lines} >= {"torch", "fastapi", "psycopg"}
    refused = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml"), "no-such-extra"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "unknown extras ['no-such-extra']" in refused.stderr


def _cli_options(app: typer.Typer, subcommand: str) -> set[str]:
    command = typer.main.get_command(app).commands[subcommand]  # type: ignore[attr-defined]
    return {option for param in command.params for option in param.opts}


def test_the_entrypoints_are_the_project_commands():
    scripts = PYPROJECT["project"]["scripts"]
    site, peer = DOCKERFILES["site"], DOCKERFILES["peer"]
    assert _exec_form(_all(site, "ENTRYPOINT")[-1]) == ["hivemind-site"]
    assert _exec_form(_all(peer, "ENTRYPOINT")[-1]) == ["hivemind-peer"]
    assert {"hivemind-site", "hivemind-peer"} <= set(scripts)
    serve = _exec_form(_all(site, "CMD")[-1])
    assert serve[0] == "serve" and serve[serve.index("--host") + 1] == "0.0.0.0"
    assert {"--host", "--port"} <= _cli_options(site_cli, "serve")
    assert _exec_form(_all(peer, "CMD")[-1]) == ["--help"]
    assert {"--identity", "--announce", "--port"} <= _cli_options(peer_cli, "dht")


def test_the_site_image_checks_its_health_endpoint(tmp_path):
    path = DOCKERFILES["site"]
    serve = _exec_form(_all(path, "CMD")[-1])
    port = serve[serve.index("--port") + 1]
    assert _all(path, "EXPOSE") == [port]
    healthcheck = _all(path, "HEALTHCHECK")
    assert len(healthcheck) == 1 and "CMD" in healthcheck[0]
    probe = _exec_form(healthcheck[0].split("CMD", 1)[1].strip())
    assert probe[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{port}/api/v1/health" in probe[2]
    probe_path = probe[2].split(f"127.0.0.1:{port}", 1)[1].split("'")[0]
    url = f"sqlite:///{tmp_path / 'site.db'}"
    upgrade(url)  # as `serve` does before it listens
    settings = Settings(
        database_url=url,
        secret_key=secrets.token_urlsafe(48),
        upload_dir=tmp_path / "uploads",
        monitor_enabled=False,  # the probe needs no swarm
    )
    with TestClient(create_app(settings)) as client:
        assert client.get(probe_path).status_code == 200
    assert not _all(DOCKERFILES["peer"], "HEALTHCHECK")  # a peer has no HTTP endpoint to probe
