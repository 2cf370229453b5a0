"""`hivemind-site monitor`: its help, one poll with --once, and the worker as a real process that
stores what a swarm publishes and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from backend.cli import _settings, app
from backend.db import make_engine, make_session_factory
from backend.migrate import upgrade
from backend.models import MonitorStatus
from backend.monitor import MonitorConfig, MonitorService, SwarmMonitor
from backend.schemas import RunCreate
from backend.services.runs import create_run
from backend.services.users import create_user
from backend.settings import Settings
from peer.dht import DHT, DHTConfig, get_dht_time
from peer.optim.progress import ProgressRecord, ProgressTracker, run_validators
from peer.utils.loop import run_coroutine

SLUG = "cli-run"
runner = CliRunner()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A migrated SQLite site with an open run whose swarm is one publishing peer."""
    url = f"sqlite:///{tmp_path / 'site.db'}"
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv("HIVEMIND_SITE_SECRET_KEY", secret)
    monkeypatch.setenv("HIVEMIND_SITE_MONITOR_IDENTITY_DIR", str(tmp_path / "monitor-keys"))
    upgrade(url)
    peer = DHT(record_validators=run_validators(SLUG), config=DHTConfig(request_timeout=2.0))
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            owner = create_user(
                session, email="o@example.org", username="olga", password="a long password", role="organizer"
            )
            body = RunCreate(
                slug=SLUG,
                name="CLI",
                recipe={"name": "char-transformer", "config": {}},
                target_batch_size=100,
                auth_mode="open",
                initial_peers=peer.get_visible_maddrs(),
            )
            create_run(session, owner=owner, data=body, secret_key=secret)
            session.commit()
        record = ProgressRecord(
            epoch=0,
            samples_accumulated=5,
            samples_per_second=5.0,
            mini_steps=1,
            total_samples=5,
            time=get_dht_time(),
        )
        run_coroutine(ProgressTracker(peer, SLUG, 100).apublish(record))
        yield url, engine
    finally:
        peer.shutdown()
        engine.dispose()


def _version(engine) -> int:
    with make_session_factory(engine)() as session:
        return session.scalar(select(MonitorStatus.version)) or 0


def test_help_teaches_how_to_run_the_worker():
    result = runner.invoke(app, ["monitor", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for text in ("--interval", "--once", "--no-monitor", "client-mode DHT peer", "SIGTERM"):
        assert text in result.output


def test_serve_can_leave_the_monitor_to_a_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("HIVEMIND_SITE_SECRET_KEY_FILE", str(tmp_path / "secret"))
    assert _settings(None, monitor_enabled=None).monitor_enabled  # on by default
    assert not _settings(None, monitor_enabled=False).monitor_enabled  # serve --no-monitor
    monkeypatch.setenv("HIVEMIND_SITE_MONITOR_ENABLED", "false")
    assert not _settings(None, monitor_enabled=None).monitor_enabled
    assert _settings("sqlite:///x.db", monitor_interval_s=2.5).monitor_interval_s == 2.5


def test_once_polls_every_run_and_reports(site):
    url, engine = site
    result = runner.invoke(app, ["monitor", "--once", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert f"{SLUG}: stored" in result.output
    assert _version(engine) == 1


@pytest.mark.timeout(120)
def test_the_worker_monitors_until_sigterm(site):
    url, engine = site
    command = [sys.executable, "-m", "backend.cli", "monitor", "--database-url", url, "--interval", "0.5"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        deadline = time.monotonic() + 60
        while _version(engine) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1]
        assert _version(engine) >= 2, "the worker stored nothing within a minute"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "The swarm monitor is running" in stderr and "The swarm monitor stopped" in stderr


def test_the_service_runs_hooks_with_each_polled_run_and_its_dht(site, tmp_path):
    url, engine = site
    calls: list[tuple[str, str, int]] = []
    called = threading.Event()

    async def hook(spec, dht) -> None:
        found = await dht.aget(f"{spec.slug}_progress", latest=True)
        calls.append((spec.slug, spec.manifest["slug"], len(found.value) if found else 0))
        called.set()

    settings = Settings(
        database_url=url, monitor_interval_s=0.5, monitor_identity_dir=tmp_path / "monitor-keys"
    )
    monitor = SwarmMonitor(
        MonitorConfig.from_settings(settings),
        make_session_factory(engine),
        secret_key=settings.resolved_secret_key(),
        hooks=[hook],
    )
    service = MonitorService(monitor)
    service.start()
    try:
        assert called.wait(60), "no hook call within a minute"
    finally:
        service.stop()
    assert not service.running and monitor.watchers == {}
    assert calls[0] == (SLUG, SLUG, 1)  # the run, its manifest, and a DHT that sees its swarm
