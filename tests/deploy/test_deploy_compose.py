"""docker-compose.yml, validated offline: `docker-compose config` (Debian's docker-compose v1, no Docker
daemon needed) resolves it, and the tests check how the services are wired.

`make test` installs docker-compose when it runs as root; elsewhere these tests skip without it,
except under CI=true, where they must run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from backend.cli import app as site_cli
from backend.demo import DEMO_SLUG
from peer.cli import app as peer_cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = {
    "HIVEMIND_SITE_SECRET_KEY": secrets.token_urlsafe(48),
    "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
    "HIVEMIND_SITE_ORGANIZER_PASSWORD": secrets.token_urlsafe(24),
}
SITE_IMAGE_SERVICES = {"site", "setup"}
PEER_IMAGE_SERVICES = {"bootstrap", "volunteer-1", "volunteer-2"}


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        reason = (
            "docker-compose is not installed: `make test` installs Debian's when it runs as root "
            "(or run `apt-get install --no-install-recommends docker-compose`)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _compose_config(workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly `env`: neither the caller's shell nor a local .env leaks in."""
    empty_env_file = workdir / "empty.env"
    empty_env_file.write_text("")
    command = [_docker_compose(), "--project-directory", str(ROOT), "--env-file", str(empty_env_file)]
    return subprocess.run(
        [*command, "--file", str(COMPOSE_FILE), "config"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> dict[str, dict]:
    result = _compose_config(tmp_path_factory.mktemp("compose"), SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    declared = set(config.get("volumes") or {})
    for name, service in config["services"].items():  # every named volume a service mounts is declared
        for source, _, _ in _volumes(service):
            assert source in declared, f"service {name} mounts the undeclared volume {source}"
    return config["services"]


def _volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each mount, in docker-compose v1's short or v2's long form."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts.append((source, target, "ro" in mode))
        else:
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return mounts


def _options(command: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` options (a bare flag maps to "")."""
    options = {}
    for index, item in enumerate(command):
        if item.startswith("--"):
            name, equals, value = item.removeprefix("--").partition("=")
            following = command[index + 1] if index + 1 < len(command) else "--"
            options[name] = value if equals or following.startswith("--") else following
    return options


def _condition(service: dict, dependency: str) -> str | None:
    depends_on = service.get("depends_on") or {}
    return (depends_on.get(dependency) or {}).get("condition") if isinstance(depends_on, dict) else None


def test_the_services_and_their_images(services):
    assert set(services) == {"postgres", *SITE_IMAGE_SERVICES, *PEER_IMAGE_SERVICES}
    for name in SITE_IMAGE_SERVICES | PEER_IMAGE_SERVICES:
        dockerfile = "docker/Dockerfile.site" if name in SITE_IMAGE_SERVICES else "docker/Dockerfile.peer"
        assert services[name]["build"]["dockerfile"] == dockerfile
        assert (ROOT / dockerfile).is_file()
        assert Path(services[name]["build"]["context"]).resolve() == ROOT
    assert services["postgres"]["image"].startswith("postgres:")


def test_the_site_waits_for_a_healthy_postgres_and_keeps_its_data_in_volumes(services):
    postgres, site = services["postgres"], services["site"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert ("postgres-data", "/var/lib/postgresql/data", False) in _volumes(postgres)
    assert _condition(site, "postgres") == "service_healthy"
    assert site["command"][:1] == ["serve"] and _options(site["command"])["host"] == "0.0.0.0"
    environment = site["environment"]
    password = SECRETS["POSTGRES_PASSWORD"]
    assert environment["DATABASE_URL"] == f"postgresql+psycopg://hivemind:{password}@postgres:5432/hivemind"
    assert postgres["environment"]["POSTGRES_PASSWORD"] == password
    assert environment["HIVEMIND_SITE_SECRET_KEY"] == SECRETS["HIVEMIND_SITE_SECRET_KEY"]
    assert environment["HIVEMIND_SITE_PUBLIC_URL"] == "http://site:8000"
    assert environment["HIVEMIND_SITE_UPLOAD_DIR"].startswith("/data/")
    assert ("site-data", "/data", False) in _volumes(site)
    assert [int(port["target"]) for port in site["ports"]] == [8000]


def test_the_bootstrap_node_keeps_its_identity_and_is_the_runs_initial_peer(services):
    bootstrap, setup = services["bootstrap"], services["setup"]
    assert bootstrap["command"][0] == "dht"
    node = _options(bootstrap["command"])
    assert ("bootstrap-data", "/data", False) in _volumes(bootstrap)
    assert node["identity"].startswith("/data/")  # in the volume: the same PeerID after a restart
    assert node["announce"] == f"/dns4/bootstrap/tcp/{node['port']}"
    assert bootstrap["healthcheck"]["test"]

    assert setup["command"][0] == "demo-setup"
    options = _options(setup["command"])
    assert options["bootstrap-address"] == node["announce"]
    key_in_bootstrap_volume = Path(node["identity"]).relative_to("/data")
    mounts = {target: (source, read_only) for source, target, read_only in _volumes(setup)}
    key_dir = Path(options["bootstrap-identity"]).parent
    assert mounts[str(key_dir)] == ("bootstrap-data", True)  # read-only: setup only reads the PeerID
    assert Path(options["bootstrap-identity"]).relative_to(key_dir) == key_in_bootstrap_volume
    assert mounts["/data"] == ("site-data", False)  # where the corpus is stored as the run's dataset
    assert _condition(setup, "site") == "service_healthy"
    assert _condition(setup, "bootstrap") == "service_healthy"
    assert (
        setup["environment"]["HIVEMIND_SITE_ORGANIZER_PASSWORD"]
        == SECRETS["HIVEMIND_SITE_ORGANIZER_PASSWORD"]
    )
    assert setup["environment"]["DATABASE_URL"] == services["site"]["environment"]["DATABASE_URL"]
    assert setup.get("restart") in (None, "no")


@pytest.mark.parametrize("name", ["volunteer-1", "volunteer-2"])
def test_volunteers_join_the_demo_run_once_it_is_set_up(services, name):
    volunteer = services[name]
    assert volunteer["command"][:2] == ["join", f"http://site:8000/runs/{DEMO_SLUG}"]
    options = _options(volunteer["command"])
    assert options["announce"] == f"/dns4/{name}/tcp/{options['port']}"  # others dial it by service name
    assert (f"{name}-data", options["data-dir"], False) in _volumes(volunteer)
    assert _condition(volunteer, "setup") == "service_completed_successfully"


@pytest.mark.parametrize(
    ("variable", "value"),
    [(name, None) for name in sorted(SECRETS)] + [("HIVEMIND_SITE_SECRET_KEY", "")],
    ids=lambda item: "unset" if item is None else "empty" if item == "" else item,
)
def test_compose_refuses_to_start_without_a_secret(tmp_path, variable, value):
    env = {key: secret for key, secret in SECRETS.items() if key != variable}
    if value is not None:
        env[variable] = value
    result = _compose_config(tmp_path, env)
    assert result.returncode != 0
    assert f"set {variable} in .env" in result.stderr


def test_env_example_names_every_required_variable_without_a_value():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    assert required == set(SECRETS)
    example = (ROOT / ".env.example").read_text()
    assignments = dict(re.findall(r"^(\w+)=(.*)$", example, flags=re.MULTILINE))
    for variable in required:
        assert assignments.get(variable) == "", f".env.example must list {variable}= with no value"


def _cli_options(app: typer.Typer, subcommand: str) -> set[str]:
    command = typer.main.get_command(app).commands[subcommand]  # type: ignore[attr-defined]
    return {option.removeprefix("--") for param in command.params for option in param.opts}


def test_the_commands_use_options_the_clis_have():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in raw["services"].items():
        if name == "postgres":
            continue
        app = site_cli if name in SITE_IMAGE_SERVICES else peer_cli
        subcommand, *_ = service["command"]
        unknown = set(_options(service["command"])) - _cli_options(app, subcommand)
        assert not unknown, f"service {name}: {subcommand} has no options {sorted(unknown)}"
