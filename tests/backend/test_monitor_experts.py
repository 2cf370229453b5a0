"""The monitor reads a real Mixture-of-Experts swarm: volunteers' expert hosts declare their experts
in the run's DHT (as `hivemind-peer join` does), and `/experts` and the run page show which of the
grid's experts are live and who serves them. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from backend.models import Run
from backend.monitor import MonitorConfig, SwarmMonitor
from backend.monitor.store import StoreOptions
from peer.dht import DHT, DHTConfig
from peer.runs import get_recipe
from peer.runs.experts import ExpertHost, HostingOptions

SLUG = "moe-run"
RECIPE = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "grid": [2, 2], "k_best": 2}
CONFIG = DHTConfig(request_timeout=2.0, maintenance_period=3600.0)


def test_the_monitor_shows_which_experts_are_served_and_by_whom(
    client, db, organizer, connection, settings, tmp_path
):
    body = {
        "slug": SLUG,
        "name": "MoE",
        "recipe": {"name": "moe-char-transformer", "config": RECIPE},
        "target_batch_size": 1000,
        "auth_mode": "open",
    }
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201, body
    grid = get_recipe("moe-char-transformer", RECIPE).expert_uids()
    bootstrap = DHT(config=CONFIG)
    volunteer = DHT(bootstrap.get_visible_maddrs(), config=CONFIG)
    options = HostingOptions(num_experts=2, rebalance_period=None, average_period=None)
    host = ExpertHost(volunteer, get_recipe("moe-char-transformer", RECIPE), SLUG, options)
    config = MonitorConfig(
        interval_s=10.0,
        identity_dir=tmp_path / "monitor-keys",
        public_url="http://testserver",
        store=StoreOptions(offline_after_s=30.0),
    )
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    monitor = SwarmMonitor(config, factory, secret_key=settings.resolved_secret_key())
    try:
        hosted = host.start()
        assert len(hosted) == 2
        run = db.scalar(select(Run).where(Run.slug == SLUG))
        run.initial_peers = [str(maddr) for maddr in bootstrap.get_visible_maddrs()]
        db.commit()
        assert monitor.poll_once() == {SLUG: None}

        experts = client.get(f"/api/v1/runs/{SLUG}/experts").json()
        assert experts["total"] == len(grid) and experts["live"] == 2
        live = {item["uid"]: item for item in experts["items"] if item["live"]}
        assert set(live) == set(hosted)
        assert all(item["peer_id"] == volunteer.peer_id.to_base58() for item in live.values())
        page = client.get(f"/runs/{SLUG}").text
        assert "2 of 4 live" in page
        for uid in grid:
            assert f'data-uid="{uid}"' in page
    finally:
        monitor.shutdown()
        host.shutdown()
        volunteer.shutdown()
        bootstrap.shutdown()
