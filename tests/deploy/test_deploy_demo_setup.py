"""`hivemind-site demo-setup`: what docker-compose's one-shot `setup` service leaves in the database.

It runs against SQLite and PostgreSQL (a fresh database per test; the PostgreSQL case skips without a
server, except under CI=true), and checks the result the way a peer sees it: through the manifest.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from backend.app import create_app
from backend.cli import app as site_cli
from backend.db import make_engine
from backend.demo import demo_corpus
from backend.demo_setup import (
    DemoSetupConfig,
    DemoSetupError,
    merged_initial_peers,
    settings_with,
    setup_demo,
)
from backend.models import Run, User
from backend.services.runs import update_run
from backend.services.users import create_user
from backend.settings import Settings
from peer.net.identity import Identity
from peer.runs.manifest import parse_manifest

POSTGRES_URL = os.environ.get(
    "HIVEMIND_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BOOTSTRAP = "/dns4/bootstrap/tcp/31337"
PASSWORD = "organizer password 1"


def _fresh_postgres_database() -> Iterator[str]:
    admin_url = make_url(POSTGRES_URL)
    name = f"hivemind_deploy_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL is not reachable at {admin_url.render_as_string()}: {e.orig}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'site.db'}"
    else:
        yield from _fresh_postgres_database()


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="deploy-test-" + secrets.token_urlsafe(32),
        secret_key_file=tmp_path / "unused.secret",
        public_url="http://site:8000",
        upload_dir=tmp_path / "uploads",
        monitor_enabled=False,  # the manifest is all these tests read; no swarm to watch
    )


@pytest.fixture
def bootstrap_key(tmp_path) -> tuple[Path, Identity]:
    identity = Identity.generate()
    path = tmp_path / "bootstrap" / "identity.key"
    identity.save(path)
    return path, identity


def _config(key_path: Path | None, **changes) -> DemoSetupConfig:
    values = {"organizer_password": PASSWORD, "bootstrap_address": BOOTSTRAP, "bootstrap_identity": key_path}
    return DemoSetupConfig(**{**values, **changes})


def test_setup_creates_the_organizer_run_and_dataset_once(settings, bootstrap_key):
    key_path, bootstrap = bootstrap_key
    first = setup_demo(settings, _config(key_path))
    assert [item.split(" (")[0] for item in first.created] == [
        "organizer organizer",
        "run demo",
        "dataset of run demo",
    ]
    expected_peer = f"{BOOTSTRAP}/p2p/{bootstrap.peer_id}"
    assert first.initial_peers == [expected_peer]
    assert first.run_url == "http://site:8000/runs/demo"

    again = setup_demo(settings, _config(key_path, organizer_password=None))  # nothing to create
    assert again.created == [] and again.initial_peers == [expected_peer]
    assert len(list(settings.upload_dir.iterdir())) == 1  # the corpus was stored once

    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 1
        organizer = session.scalar(select(User).where(User.username == "organizer"))
        assert organizer is not None and organizer.role == "organizer"
        assert PASSWORD not in organizer.password_hash
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/api/v1/runs/demo/manifest")
        assert response.status_code == 200, response.text
        manifest = parse_manifest(response.text)  # what `hivemind-peer join http://site:8000/runs/demo` reads
        corpus = client.get("/runs/demo/dataset")
    engine.dispose()
    assert manifest.auth.mode == "open"
    assert manifest.recipe.name == "char-transformer"
    assert manifest.initial_peers == [expected_peer]
    assert manifest.dataset is not None and manifest.dataset.url == "http://site:8000/runs/demo/dataset"
    assert manifest.dataset.sha256 == hashlib.sha256(demo_corpus()).hexdigest()
    assert corpus.status_code == 200 and corpus.content == demo_corpus()


def test_a_new_bootstrap_key_replaces_only_its_old_address(settings, tmp_path, bootstrap_key):
    key_path, old = bootstrap_key
    setup_demo(settings, _config(key_path))
    other_peer = f"/ip4/10.0.0.7/tcp/4001/p2p/{Identity.generate().peer_id}"
    engine = make_engine(settings.database_url)
    with Session(engine) as session:  # the organizer adds a peer of their own to the run
        run = session.scalar(select(Run).where(Run.slug == "demo"))
        peers = [*run.initial_peers, other_peer]
        update_run(session, run=run, data=settings_with(run, initial_peers=peers))
        session.commit()
    engine.dispose()

    new = Identity.generate()  # the bootstrap node's volume was recreated: a new key, the same address
    new_path = tmp_path / "new.key"
    new.save(new_path)
    result = setup_demo(settings, _config(new_path))
    assert result.created == ["initial peers of run demo"]
    assert result.initial_peers == [f"{BOOTSTRAP}/p2p/{new.peer_id}", other_peer]
    assert str(old.peer_id) not in " ".join(result.initial_peers)


def test_merged_initial_peers_keeps_order_and_other_addresses():
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    current = [f"{BOOTSTRAP}/p2p/{a}", f"/ip4/1.2.3.4/tcp/5/p2p/{a}"]
    assert merged_initial_peers(current, f"{BOOTSTRAP}/p2p/{b}") == [
        f"{BOOTSTRAP}/p2p/{b}",
        f"/ip4/1.2.3.4/tcp/5/p2p/{a}",
    ]
    assert merged_initial_peers([], BOOTSTRAP) == [BOOTSTRAP]


def test_setup_explains_what_is_missing_or_wrong(settings, tmp_path, bootstrap_key):
    key_path, _ = bootstrap_key
    with pytest.raises(DemoSetupError, match="HIVEMIND_SITE_ORGANIZER_PASSWORD"):
        setup_demo(settings, _config(key_path, organizer_password=None))
    with pytest.raises(DemoSetupError, match="has the bootstrap node started"):
        setup_demo(settings, _config(tmp_path / "missing.key"))
    stranger = Identity.generate().peer_id
    with pytest.raises(DemoSetupError, match="names PeerID"):
        setup_demo(settings, _config(key_path, bootstrap_address=f"{BOOTSTRAP}/p2p/{stranger}"))
    with pytest.raises(DemoSetupError, match="--bootstrap-address"):
        setup_demo(settings, _config(key_path, bootstrap_address="bootstrap:31337"))

    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        create_user(session, email="v@example.org", username="volunteer", password=PASSWORD, role="volunteer")
        session.commit()
        assert session.scalar(select(func.count()).select_from(Run)) == 0  # the failures left no run
    engine.dispose()
    with pytest.raises(DemoSetupError, match="not an organizer"):
        setup_demo(settings, _config(key_path, organizer_username="volunteer"))


def test_demo_setup_command(tmp_path, bootstrap_key, monkeypatch):
    key_path, bootstrap = bootstrap_key
    monkeypatch.setenv("HIVEMIND_SITE_SECRET_KEY", "deploy-test-" + secrets.token_urlsafe(32))
    monkeypatch.setenv("HIVEMIND_SITE_UPLOAD_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("HIVEMIND_SITE_PUBLIC_URL", "http://site:8000")
    monkeypatch.delenv("HIVEMIND_SITE_ORGANIZER_PASSWORD", raising=False)
    args = [
        "demo-setup",
        f"--database-url=sqlite:///{tmp_path / 'site.db'}",
        f"--bootstrap-address={BOOTSTRAP}",
        f"--bootstrap-identity={key_path}",
    ]
    runner = CliRunner()
    refused = runner.invoke(site_cli, args)
    assert refused.exit_code == 2 and "HIVEMIND_SITE_ORGANIZER_PASSWORD" in refused.output

    done = runner.invoke(site_cli, args, env={"HIVEMIND_SITE_ORGANIZER_PASSWORD": PASSWORD})
    assert done.exit_code == 0, done.output
    assert "demo run: http://site:8000/runs/demo" in done.output
    assert f"initial peers: {BOOTSTRAP}/p2p/{bootstrap.peer_id}" in done.output
    again = runner.invoke(site_cli, args)
    assert again.exit_code == 0 and "nothing (already set up)" in again.output

    lonely = runner.invoke(site_cli, ["demo-setup", f"--bootstrap-identity={key_path}"])
    assert lonely.exit_code == 2 and "needs --bootstrap-address" in lonely.output
