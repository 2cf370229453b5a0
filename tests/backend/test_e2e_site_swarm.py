"""End to end: `hivemind-site serve` (with its monitor) and two real `hivemind-peer join` processes
of alice and bob. Within a bounded time the REST leaderboard lists both users with growing samples,
`/metrics` shows the run, and the site saves the swarm's model as a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from browser_helpers import running_site
from site_helpers import PASSWORD

from backend.db import make_engine, make_session_factory
from backend.services.api_keys import create_api_key
from backend.services.users import create_user
from peer.dht import DHT, DHTConfig
from peer.optim.progress import run_validators

pytestmark = pytest.mark.slow

SLUG = "e2e"
CORPUS = b"".join(
    path.read_bytes() for path in sorted((Path(__file__).resolve().parents[2] / "docs").glob("*.md"))
)


def _accounts(workdir: Path) -> dict[str, str]:
    engine = make_engine(f"sqlite:///{workdir / 'site.db'}")
    keys = {}
    try:
        with make_session_factory(engine)() as session:
            for name, role in (("olga", "organizer"), ("alice", "volunteer"), ("bob", "volunteer")):
                user = create_user(
                    session, email=f"{name}@example.org", username=name, password=PASSWORD, role=role
                )
                keys[name] = create_api_key(session, user=user, name="e2e")[1]
            session.commit()
    finally:
        engine.dispose()
    return keys


def _create_run(site: str, organizer_key: str, initial_peers: list[str]) -> None:
    headers = {"Authorization": f"Bearer {organizer_key}"}
    body = {
        "slug": SLUG,
        "name": "End to end",
        "recipe": {
            "name": "char-transformer",
            "config": {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
        },
        "target_batch_size": 64,
        "optimizer": {"lr": 0.003},
        "averaging": {"min_matchmaking_time": 0.5, "averaging_timeout": 5},
        "auth_mode": "open",
        "initial_peers": initial_peers,
    }
    response = httpx.post(f"{site}/api/v1/runs", json=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    response = httpx.put(
        f"{site}/api/v1/runs/{SLUG}/dataset",
        params={"filename": "docs.txt", "format": "text"},
        content=CORPUS,
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _samples(site: str) -> dict[str, int]:
    rows = httpx.get(f"{site}/api/v1/runs/{SLUG}/leaderboard", timeout=10).json()["items"]
    return {row["user"]: row["samples"] for row in rows if row["user"]}


def _wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_volunteers_fill_the_leaderboard_and_metrics(tmp_path):
    bootstrap = DHT([], record_validators=run_validators(SLUG), config=DHTConfig(request_timeout=3.0))
    env = {
        "HIVEMIND_SITE_MONITOR_ENABLED": "true",
        "HIVEMIND_SITE_MONITOR_INTERVAL_S": "1",
        "HIVEMIND_SITE_MONITOR_IDENTITY_DIR": str(tmp_path / "monitor"),
        "HIVEMIND_SITE_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "HIVEMIND_SITE_CHECKPOINT_PERIOD_S": "5",
    }
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        with running_site(tmp_path, **env) as site:
            keys = _accounts(tmp_path)
            _create_run(site, keys["olga"], bootstrap.get_visible_maddrs())
            for name in ("alice", "bob"):
                command = [sys.executable, "-m", "peer.cli", "join", f"{site}/runs/{SLUG}"]
                command += ["--data-dir", str(tmp_path / name), "--batch-size", "8", "--max-steps", "100000"]
                log = open(tmp_path / f"{name}.log", "wb")
                logs.append(log)
                peer_env = {**os.environ, "HIVEMIND_TOKEN": keys[name], "PYTHONUNBUFFERED": "1"}
                processes.append(
                    subprocess.Popen(command, env=peer_env, stdout=log, stderr=subprocess.STDOUT)
                )

            first = _wait_until(
                lambda: (s := _samples(site)) and s.get("alice", 0) > 0 and s.get("bob", 0) > 0 and s,
                timeout=150,
                what="alice and bob on the leaderboard",
            )
            _wait_until(
                lambda: all(_samples(site)[name] > first[name] for name in ("alice", "bob")),
                timeout=60,
                what="alice's and bob's samples to grow",
            )
            metrics = httpx.get(f"{site}/metrics", timeout=10).text
            assert f'hivemind_run_peers_online{{run="{SLUG}"}}' in metrics
            peers = httpx.get(f"{site}/api/v1/runs/{SLUG}/peers", timeout=10).json()["items"]
            assert {peer["user"] for peer in peers if peer["online"]} >= {"alice", "bob"}
            checkpoints = _wait_until(
                lambda: httpx.get(f"{site}/api/v1/runs/{SLUG}/checkpoints", timeout=10).json()["items"],
                timeout=60,
                what="the site to save the swarm's model",
            )
            assert checkpoints[0]["source"] == "swarm" and checkpoints[0]["epoch"] >= 1
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in logs:
            log.close()
        bootstrap.shutdown()
