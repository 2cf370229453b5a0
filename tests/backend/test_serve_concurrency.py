"""`hivemind-site serve` as a real process under many concurrent readers, and `serve --workers 2`.

A request keeps its database connection while it waits for a worker thread for its next step; with
a pool that could run dry, 40 worker threads waiting for connections held by requests waiting for a
thread deadlocked the site (50 concurrent readers were enough). `serve` now uses a pool that never
makes a request wait, so every reader gets its answer."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest
from browser_helpers import free_port, running_site, wait_for_site
from websockets.asyncio.client import connect

from backend.db import make_engine, make_session_factory
from backend.monitor.accounting import ClaimRules
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import RunAccounting, StoreOptions, record_reading
from backend.schemas import RunCreate
from backend.services.runs import create_run
from backend.services.users import create_user
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord

SLUG = "busy"
READERS = 60
SOCKETS = 20


def _fill(database_url: str, secret: str) -> None:
    """A run with 20 peers and three polls of history, through the monitor's write path."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            owner = create_user(
                session, email="o@example.org", username="olga", password="a long password", role="organizer"
            )
            body = RunCreate(
                slug=SLUG, name="Busy", recipe={"name": "albert", "config": {}}, target_batch_size=4096
            )
            run = create_run(session, owner=owner, data=body, secret_key=secret)
            session.commit()
            accounting = RunAccounting(
                run_id=run.id, rules=ClaimRules(target_batch_size=4096), credit_peers=True
            )
            peers = [Identity.generate().peer_id.to_base58() for _ in range(20)]
            for step in range(3):
                at = time.time() - 30 + 10 * step
                sightings = {
                    peer: PeerSighting(
                        peer,
                        progress=ProgressRecord(
                            epoch=1,
                            samples_accumulated=0,
                            samples_per_second=5.0,
                            mini_steps=1,
                            total_samples=50 * step,
                            time=at,
                        ),
                        info=PeerRecord(version="0.1.0"),
                        expiration=at + 60,
                    )
                    for peer in peers
                }
                reading = SwarmReading(time=at, peers=sightings)
                record_reading(session, run=accounting, reading=reading, options=StoreOptions())
                session.commit()
    finally:
        engine.dispose()


async def _read_everything(base_url: str) -> tuple[list[int], list[int]]:
    api = f"/api/v1/runs/{SLUG}"
    paths = [
        api,
        f"{api}/peers",
        f"{api}/leaderboard",
        f"{api}/metrics?since=0",
        f"{api}/experts",
        f"/runs/{SLUG}",
    ]
    limits = httpx.Limits(max_connections=READERS)

    async def socket_version() -> int:
        async with connect(base_url.replace("http", "ws", 1) + f"{api}/live", open_timeout=120) as socket:
            return int(json.loads(await asyncio.wait_for(socket.recv(), 120))["version"])

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        async with asyncio.TaskGroup() as group:
            sockets = [group.create_task(socket_version()) for _ in range(SOCKETS)]
            readers = [group.create_task(client.get(paths[i % len(paths)])) for i in range(READERS)]
    return [task.result().status_code for task in readers], [task.result() for task in sockets]


@pytest.mark.timeout(240)
def test_many_concurrent_readers_all_get_their_answer(tmp_path):
    secret = "serve-test-secret-" + secrets.token_hex(24)
    with running_site(tmp_path, HIVEMIND_SITE_SECRET_KEY=secret) as base_url:
        _fill(f"sqlite:///{tmp_path / 'site.db'}", secret)
        statuses, versions = asyncio.run(_read_everything(base_url))
    assert statuses == [200] * READERS
    assert versions == [3] * SOCKETS


@pytest.mark.timeout(240)
def test_serve_with_two_workers_runs_the_monitor_once_beside_them(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HIVEMIND_SITE_SECRET_KEY": "serve-test-secret-" + secrets.token_hex(24),
        "HIVEMIND_SITE_MONITOR_IDENTITY_DIR": str(tmp_path / "monitor-keys"),
        "HIVEMIND_SITE_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    env.pop("DATABASE_URL", None)
    env.pop("HIVEMIND_SITE_MONITOR_ENABLED", None)
    url = f"sqlite:///{tmp_path / 'site.db'}"
    command = [sys.executable, "-m", "backend.cli", "serve", "--port", str(port), "--database-url", url]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "--workers", "2"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_site(f"http://127.0.0.1:{port}", process, log_path, timeout=120)
            for _ in range(4):
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/runs", timeout=30)
                assert response.status_code == 200 and response.json()["total"] == 0
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
    text = log_path.read_text()
    assert code == 0, text
    assert text.count("Started server process") == 2 and text.count("Application startup complete") == 2
    assert text.count("The swarm monitor is running") == 1 and "The swarm monitor stopped" in text
