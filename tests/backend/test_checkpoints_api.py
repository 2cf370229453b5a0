"""Checkpoints over REST on SQLite and PostgreSQL: listing, download, sidecar, path traversal, the
organizer's seed upload (checked against the recipe's model) and the manifest's initial_state."""

from __future__ import annotations

import datetime
import hashlib
import io
import re
import zipfile

import pytest
import torch
from site_helpers import run_body

from backend.checkpoints import CheckpointStore, RecipeInfo
from peer.runs import get_recipe

TINY = {"name": "char-transformer", "config": {"d_model": 8, "n_layers": 1, "n_heads": 1, "seq_len": 4}}


@pytest.fixture
def store(app, tmp_path) -> CheckpointStore:
    app.state.checkpoint_store = CheckpointStore(tmp_path / "checkpoints", keep=3)
    return app.state.checkpoint_store


@pytest.fixture
def tiny_run(client, organizer) -> dict:
    response = client.post("/api/v1/runs", json=run_body(slug="tiny", recipe=TINY), headers=organizer.headers)
    assert response.status_code == 201, response.text
    return response.json()


def _model_state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = get_recipe(TINY["name"], TINY["config"]).build_model().state_dict()
    state.update(changes)
    return state


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _upload(client, account, body: bytes, slug: str = "tiny"):
    headers = {**account.headers, "content-type": "application/octet-stream"} if account else {}
    return client.put(f"/api/v1/runs/{slug}/initial-checkpoint", content=body, headers=headers)


def test_listing_download_and_sidecar(client, run, store):
    assert client.get("/api/v1/runs/demo/checkpoints").json() == {"items": [], "initial_state": None}
    recipe = RecipeInfo(name="albert", config={"seq_len": 512})
    older = store.save("demo", {"w": torch.ones(2)}, epoch=4, recipe=recipe, source="swarm")
    newer = store.save("demo", {"w": torch.full((2,), 7.0)}, epoch=9, recipe=recipe, source="swarm")
    listing = client.get("/api/v1/runs/demo/checkpoints").json()
    assert [item["id"] for item in listing["items"]] == [newer.id, older.id]
    item = listing["items"][0]
    url = f"http://testserver/api/v1/runs/demo/checkpoints/{newer.id}"
    assert item["url"] == url and item["meta_url"] == f"{url}/meta"
    assert item["epoch"] == 9 and item["source"] == "swarm" and item["size"] == newer.size
    assert (
        item["recipe"] == {"name": "albert", "config": {"seq_len": 512}} and listing["initial_state"] is None
    )

    download = client.get(f"/api/v1/runs/demo/checkpoints/{newer.id}")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == item["sha256"] == newer.sha256
    assert f'filename="demo-epoch9-{newer.id}.pt"' in download.headers["content-disposition"]
    state = torch.load(io.BytesIO(download.content), weights_only=True)
    assert torch.equal(state["w"], torch.full((2,), 7.0))

    meta = client.get(f"/api/v1/runs/demo/checkpoints/{newer.id}/meta").json()
    assert meta["id"] == newer.id and meta["run"] == "demo" and meta["epoch"] == 9
    assert meta["sha256"] == newer.sha256 and meta["size"] == len(download.content)
    assert meta["recipe"] == {"name": "albert", "config": {"seq_len": 512}} and meta["source"] == "swarm"
    assert datetime.datetime.fromisoformat(meta["created_at"].replace("Z", "+00:00")) == newer.created_at


def test_unknown_runs_and_checkpoints_are_404(client, run, store):
    assert client.get("/api/v1/runs/nope/checkpoints").status_code == 404
    response = client.get("/api/v1/runs/demo/checkpoints/20240101T000000Z-0badf00d")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/runs/demo/checkpoints/20240101T000000Z-0badf00d/meta").status_code == 404


def test_path_traversal_is_refused(client, organizer, run, store, tmp_path):
    client.post("/api/v1/runs", json=run_body(slug="other"), headers=organizer.headers)
    recipe = RecipeInfo(name="albert", config={})
    theirs = store.save("other", {"w": torch.ones(1)}, epoch=1, recipe=recipe, source="swarm")
    (tmp_path / "checkpoints" / "secret.json").write_text('{"secret": true}')
    (tmp_path / "checkpoints" / "secret.pt").write_bytes(b"secret")
    for path in [
        f"/api/v1/runs/demo/checkpoints/{theirs.id}",  # another run's checkpoint
        f"/api/v1/runs/demo/checkpoints/..%2Fother%2F{theirs.id}",
        "/api/v1/runs/demo/checkpoints/%2E%2E%2Fsecret",
        "/api/v1/runs/demo/checkpoints/..%2F..%2Fsecret/meta",
        "/api/v1/runs/demo/checkpoints/%2E%2E",
        "/api/v1/runs/demo/checkpoints/secret",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path


def test_seed_upload_is_checked_against_the_recipe_model(client, organizer, tiny_run, store):
    cases = [
        (b"not a checkpoint at all", "not a torch checkpoint"),
        (_saved([torch.ones(2)]), "must be a dict of parameter name -> tensor"),
        (_saved({"position": datetime.datetime(2024, 1, 1)}), "weights-only"),  # refused by torch.load
        (
            _saved(_model_state(position=torch.zeros(5, 8))),
            "'position' has shape [5, 8], the run's model expects [4, 8]",
        ),
        (_saved({"position": torch.zeros(4, 8)}), "missing tensor(s)"),
        (_saved(_model_state(extra=torch.zeros(1))), "1 unexpected tensor(s) ('extra')"),
        (_saved(_model_state(position=torch.zeros(4, 8, dtype=torch.float64))), "torch.float64"),
        (_saved(_model_state(position=torch.full((4, 8), float("nan")))), "NaN"),
    ]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (1 << 20))
    cases.append((bomb.getvalue(), "expands to 1048576 bytes, over the 65536-byte limit"))
    for body, message in cases:
        response = _upload(client, organizer, body)
        assert response.status_code == 422, (message, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_input" and message in error["message"], error
    assert client.get("/api/v1/runs/tiny/checkpoints").json()["items"] == []
    assert client.get("/api/v1/runs/tiny/manifest").json()["initial_state"] is None
    assert [p for p in store.run_dir("tiny").iterdir()] == []  # refused uploads leave nothing behind


def test_seed_upload_needs_the_organizer_and_a_known_recipe(
    client, organizer, volunteer, make_account, run, tiny_run, store
):
    body = _saved(_model_state())
    assert _upload(client, None, body).status_code == 401
    assert _upload(client, volunteer, body).status_code == 403
    assert _upload(client, make_account("otto", "organizer"), body).status_code == 403
    response = _upload(client, organizer, body, slug="demo")  # recipe 'albert': not installed here
    assert (
        response.status_code == 422 and "cannot check the checkpoint" in response.json()["error"]["message"]
    )
    assert _upload(client, organizer, b"").status_code == 422
    assert _upload(client, organizer, b"\0" * (64 * 1024 + 1)).status_code == 413  # max_upload_bytes
    assert client.get("/api/v1/runs/tiny/checkpoints").json()["items"] == []


def test_seed_is_listed_and_named_in_the_manifest(client, organizer, tiny_run, store):
    state = _model_state()
    response = _upload(client, organizer, _saved(state))
    assert response.status_code == 200, response.text
    seed = response.json()
    assert seed["source"] == "upload" and seed["epoch"] == 0 and seed["recipe"] == TINY
    listing = client.get("/api/v1/runs/tiny/checkpoints").json()
    assert listing["initial_state"] == seed and listing["items"] == [seed]
    manifest = client.get("/api/v1/runs/tiny/manifest").json()
    assert manifest["initial_state"] == {"url": seed["url"], "sha256": seed["sha256"]}
    download = client.get(seed["url"].removeprefix("http://testserver"))
    assert hashlib.sha256(download.content).hexdigest() == seed["sha256"]
    loaded = torch.load(io.BytesIO(download.content), weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    second = _upload(client, organizer, _saved(_model_state(position=torch.ones(4, 8)))).json()
    assert [item["id"] for item in client.get("/api/v1/runs/tiny/checkpoints").json()["items"]] == [
        second["id"]
    ]
    assert client.get("/api/v1/runs/tiny/manifest").json()["initial_state"]["sha256"] == second["sha256"]

    assert client.delete("/api/v1/runs/tiny/initial-checkpoint", headers=organizer.headers).status_code == 204
    assert client.get("/api/v1/runs/tiny/manifest").json()["initial_state"] is None
    assert client.delete("/api/v1/runs/tiny/initial-checkpoint", headers=organizer.headers).status_code == 404


def test_run_page_offers_the_latest_model(client, run, store):
    page = client.get("/runs/demo").text
    assert "No model saved yet" in page and "download-latest-model" not in page
    recipe = RecipeInfo(name="albert", config={})
    store.save("demo", {"w": torch.ones(1)}, epoch=3, recipe=recipe, source="swarm")
    latest = store.save("demo", {"w": torch.ones(1)}, epoch=8, recipe=recipe, source="swarm")
    page = client.get("/runs/demo").text
    link = re.search(r'id="download-latest-model" href="([^"]+)"', page)
    assert link and link.group(1) == f"http://testserver/api/v1/runs/demo/checkpoints/{latest.id}"
    assert "epoch 8" in page and page.count(" download>Download</a>") == 2
