"""The monitoring REST API (peers, leaderboard, metrics, experts), the Prometheus endpoint and the
page services, over data stored by the monitor's write path; on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
import time

import pytest
from site_helpers import run_body
from sqlalchemy import select
from torch import nn

from backend.api.prometheus import Exposition, escape_label_value
from backend.models import Run
from backend.monitor.accounting import ClaimRules
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import RunAccounting, StoreOptions, record_failure, record_reading
from backend.services import swarm as swarm_service
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord
from peer.runs import recipes

T0 = time.time() - 600


def sighting(peer_id: str, total: int, at: float, *, epoch: int = 2, speed: float = 20.0) -> PeerSighting:
    progress = ProgressRecord(
        epoch=epoch,
        samples_accumulated=total % 4096,
        samples_per_second=speed,
        loss=2.5,
        mini_steps=1,
        total_samples=total,
        time=at,
    )
    info = PeerRecord(version="0.1.0", reachability="relayed", device="cuda", username="claimed")
    return PeerSighting(peer_id, progress=progress, info=info, expiration=at + 60)


def store(db, slug: str, *sightings: PeerSighting, at: float, experts=None, invalid: int = 0) -> None:
    run = db.scalar(select(Run).where(Run.slug == slug))
    accounting = RunAccounting(
        run_id=run.id,
        rules=ClaimRules(target_batch_size=run.target_batch_size),
        credit_peers=run.auth_mode == "open",
    )
    reading = SwarmReading(
        time=at,
        peers={item.peer_id: item for item in sightings},
        experts=experts,
        invalid_records=invalid,
        duration_s=0.25,
    )
    record_reading(db, run=accounting, reading=reading, options=StoreOptions(offline_after_s=30))
    db.commit()


@pytest.fixture
def populated(client, db, run, volunteer):
    """Run `demo` (token run): victor's peer (token issued by the site) and a peer without a token."""
    mine = Identity.generate().peer_id.to_base58()
    stranger = Identity.generate().peer_id.to_base58()
    response = client.post(
        "/api/v1/runs/demo/access-tokens", json={"peer_public_key": mine}, headers=volunteer.headers
    )
    assert response.status_code == 200, response.text
    for step in range(4):
        at = T0 + 10 * step
        store(
            db,
            "demo",
            sighting(mine, 1000 + 100 * step, at),
            sighting(stranger, 500 + 50 * step, at),
            at=at,
            invalid=1,
        )
    return mine, stranger


def test_peers_show_who_is_credited_and_what_they_claim(client, populated):
    mine, stranger = populated
    response = client.get("/api/v1/runs/demo/peers")
    assert response.status_code == 200
    page = response.json()
    assert page["total"] == 2 and page["limit"] == 100
    peers = {item["peer_id"]: item for item in page["items"]}
    assert peers[mine]["user"] == "victor" and peers[mine]["declared_username"] == "claimed"
    assert peers[stranger]["user"] is None  # a token run credits nobody for a peer without a token
    assert peers[mine]["credited_samples"] == 300 and peers[mine]["total_samples"] == 1300
    assert peers[mine]["reachability"] == "relayed" and peers[mine]["device"] == "cuda"
    assert peers[mine]["short_id"].endswith(mine[-8:]) and peers[mine]["online"]
    assert client.get("/api/v1/runs/demo/peers?limit=1&offset=1").json()["items"][0]["peer_id"] in peers
    assert client.get("/api/v1/runs/demo/peers?online_only=true").json()["total"] == 2
    assert client.get("/api/v1/runs/demo/peers?limit=0").status_code == 422


def test_leaderboard_ranks_credited_contributors(client, db, populated, make_account):
    rows = client.get("/api/v1/runs/demo/leaderboard").json()
    assert rows["total"] == 1
    (first,) = rows["items"]
    assert (first["rank"], first["name"], first["user"], first["samples"]) == (1, "victor", "victor", 300)
    assert first["time_online_s"] == pytest.approx(30) and first["recent_score"] == pytest.approx(
        300, rel=0.01
    )
    for order in ("recent", "time_online"):
        assert (
            client.get(f"/api/v1/runs/demo/leaderboard?order={order}").json()["items"][0]["name"] == "victor"
        )
    assert client.get("/api/v1/runs/demo/leaderboard?order=loudest").status_code == 422

    # an open run credits peers without a token under their PeerID
    organizer = make_account("oscar", "organizer")
    body = run_body("open-run", auth_mode="open")
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    peers = [Identity.generate().peer_id.to_base58() for _ in range(3)]
    for step, at in enumerate((T0, T0 + 10)):
        store(
            db, "open-run", *(sighting(p, 100 * (i + 1) * (step + 1), at) for i, p in enumerate(peers)), at=at
        )
    board = client.get("/api/v1/runs/open-run/leaderboard?limit=2").json()
    assert board["total"] == 3 and [row["samples"] for row in board["items"]] == [300, 200]
    assert board["items"][0]["peer_id"] == peers[2] and board["items"][0]["user"] is None
    assert board["items"][0]["name"].endswith(peers[2][-8:])
    rest = client.get("/api/v1/runs/open-run/leaderboard?limit=2&offset=2").json()["items"]
    assert [(row["rank"], row["samples"]) for row in rest] == [(3, 100)]


def test_metrics_since_pages_through_the_time_series(client, populated):
    page = client.get("/api/v1/runs/demo/metrics").json()
    assert page["run"] == "demo" and not page["truncated"] and page["next_since"] is None
    points = page["points"]
    assert [point["t"] for point in points] == sorted(point["t"] for point in points) and len(points) == 4
    assert points[-1]["total_samples"] == 450 and points[-1]["peers"] == 2 and points[-1]["epoch"] == 2
    assert points[-1]["samples_per_second"] == pytest.approx(40.0)  # both peers' claims are plausible
    first = client.get("/api/v1/runs/demo/metrics?limit=3").json()
    assert first["truncated"] and len(first["points"]) == 3
    rest = client.get(f"/api/v1/runs/demo/metrics?since={first['next_since']}").json()
    assert [point["t"] for point in rest["points"]] == [points[3]["t"]]
    assert client.get(f"/api/v1/runs/demo/metrics?since={T0 + 1000}").json()["points"] == []
    assert client.get("/api/v1/runs/demo/metrics?limit=100000").status_code == 422
    for bad in ("inf", "nan", "-1", "soon"):
        assert client.get(f"/api/v1/runs/demo/metrics?since={bad}").status_code == 422


class GridRecipe(recipes.Recipe):
    """A minimal real recipe with a 2 x 2 expert grid."""

    name = "test-grid"

    class Config(recipes.pydantic.BaseModel):
        width: int = 2

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 2)

    def batches(self, corpus, batch_size, seed):
        raise NotImplementedError

    def loss(self, model, batch):
        raise NotImplementedError

    def expert_uids(self) -> list[str]:
        width = self.config.width  # type: ignore[attr-defined]
        return [f"ffn.{i}.{j}" for i in range(width) for j in range(width)]


def test_experts_list_the_grid_with_the_live_ones(client, db, run, organizer, monkeypatch):
    assert client.get("/api/v1/runs/demo/experts").json() == {"items": [], "total": 0, "live": 0}
    monkeypatch.setitem(recipes._BUILTIN, GridRecipe.name, GridRecipe)
    body = run_body("moe-run", recipe={"name": "test-grid", "config": {"width": 2}})
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    server, other = Identity.generate().peer_id.to_base58(), Identity.generate().peer_id.to_base58()
    store(db, "moe-run", at=T0, experts={"ffn.0.0": (server,), "ffn.1.1": (other, server)})
    store(db, "moe-run", at=T0 + 10, experts={"ffn.1.1": (other,)})
    view = client.get("/api/v1/runs/moe-run/experts").json()
    assert [item["uid"] for item in view["items"]] == ["ffn.0.0", "ffn.0.1", "ffn.1.0", "ffn.1.1"]
    assert (view["total"], view["live"]) == (4, 1)
    live = {item["uid"]: item for item in view["items"]}
    assert (
        live["ffn.1.1"]["live"] and live["ffn.1.1"]["peer_id"] == other and live["ffn.1.1"]["replicas"] == 1
    )
    assert not live["ffn.0.0"]["live"] and live["ffn.0.0"]["peer_id"] == server  # it was served once
    assert live["ffn.0.1"]["peer_id"] is None and live["ffn.0.1"]["last_seen"] is None


@pytest.mark.parametrize("path", ["peers", "leaderboard", "metrics", "experts"])
def test_unknown_runs_are_404_json(client, path):
    response = client.get(f"/api/v1/runs/nope/{path}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> dict[str, dict]:
    """A strict reader of Prometheus' text format 0.0.4: HELP and TYPE before each metric's samples."""
    assert text.endswith("\n")
    metrics: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in metrics, f"{name} described twice"
            metrics[name] = {"help": help_text, "type": None, "samples": []}
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert metrics[name]["type"] is None and kind in ("gauge", "counter")
            metrics[name]["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, _, labels, value = match.groups()
            assert metrics[name]["type"] is not None, f"{name} has a sample before its TYPE"
            parsed = {}
            if labels:
                rest = labels
                while rest:
                    label = LABEL.match(rest)
                    assert label, f"bad labels in {line!r}"
                    parsed[label.group(1)] = label.group(2)
                    rest = rest[label.end() :]
            metrics[name]["samples"].append((parsed, float(value)))
    return metrics


def test_prometheus_metrics_parse_and_carry_each_run(client, db, populated):
    run_id = db.scalar(select(Run.id).where(Run.slug == "demo"))
    record_failure(db, run_id=run_id, error="timeout", now=T0 + 40)
    db.commit()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    metrics = parse_exposition(response.text)

    def value(name: str) -> float:
        (sample,) = [value for labels, value in metrics[name]["samples"] if labels == {"run": "demo"}]
        return sample

    assert metrics["hivemind_run_peers_online"]["type"] == "gauge"
    assert metrics["hivemind_run_samples_total"]["type"] == "counter"
    assert value("hivemind_run_peers_online") == 2 and value("hivemind_run_epoch") == 2
    assert value("hivemind_run_samples_per_second") == pytest.approx(40.0)
    assert value("hivemind_run_loss") == pytest.approx(2.5) and value("hivemind_run_samples_total") == 450
    assert value("hivemind_monitor_invalid_records_total") == 4 and value("hivemind_monitor_polls_total") == 4
    assert value("hivemind_monitor_poll_errors_total") == 1
    assert value("hivemind_monitor_lag_seconds") == pytest.approx(time.time() - (T0 + 30), abs=30)
    assert value("hivemind_monitor_poll_duration_seconds") == pytest.approx(0.25)
    assert metrics["hivemind_site_info"]["samples"][0][1] == 1


def test_exposition_escapes_labels_and_writes_special_values():
    out = Exposition()
    out.add("x_total", "counter", "A help\nwith a \\ backslash.", [({"run": 'a"b\\c\nd'}, math.nan)])
    out.add("y", "gauge", "Y.", [({}, math.inf), ({"k": "v"}, 1.5), ({"k": "w"}, 3.0)])
    text = out.text()
    assert "# HELP x_total A help\\nwith a \\\\ backslash." in text
    assert 'x_total{run="a\\"b\\\\c\\nd"} NaN' in text
    assert "y +Inf" in text and 'y{k="v"} 1.5' in text and 'y{k="w"} 3' in text
    parsed = parse_exposition(text)
    assert parsed["x_total"]["samples"][0][0] == {"run": escape_label_value('a"b\\c\nd')}
    with pytest.raises(ValueError, match="kind"):
        out.add("z", "histogram", "Z.", [])


def test_page_services_give_the_live_view_and_totals(db, populated, run):
    demo = db.scalar(select(Run).where(Run.slug == "demo"))
    view = swarm_service.run_live_view(db, run=demo, half_life_s=3600)
    assert view.type == "update" and view.run == "demo" and view.version == 4
    assert view.summary.peers_online == 2 and view.summary.total_samples == 450
    assert view.summary.eta_s is not None and view.summary.loss == pytest.approx(2.5)
    assert view.point is not None and view.point.total_samples == 450
    assert len(view.peers) == 2 and [row.name for row in view.leaderboard] == ["victor"]
    totals = swarm_service.runs_totals(db, [demo])
    assert totals[demo.id].contributors == 1 and totals[demo.id].peers_online == 2
    assert totals[demo.id].total_samples == 450 and totals[demo.id].updated_at is not None
    assert swarm_service.runs_totals(db, []) == {}
