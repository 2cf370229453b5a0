"""The runs REST API on SQLite and PostgreSQL: list, create, read, manifest, dataset upload."""

from __future__ import annotations

import base64
import hashlib

from site_helpers import run_body


def test_health(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["database"] == "ok"


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/runs/{slug}/access-tokens" in paths and "/api/v1/health" in paths


def test_organizer_creates_a_run(client, organizer):
    response = client.post("/api/v1/runs", json=run_body(), headers=organizer.headers)
    assert response.status_code == 201
    run = response.json()
    assert run["slug"] == "demo" and run["owner"] == "olga" and run["status"] == "active"
    assert run["join_command"] == "hivemind-peer join http://testserver/runs/demo"
    assert run["description_html"] == "<p>Train <strong>ALBERT</strong> together.</p>\n"
    assert len(base64.b64decode(run["authority_public_key"])) == 32


def test_create_run_without_key_is_401(client):
    response = client.post("/api/v1/runs", json=run_body())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_required"
    assert response.headers["www-authenticate"] == "Bearer"


def test_create_run_with_wrong_key_is_401(client):
    for key in ["hms_not-a-real-key", "garbage", "hms_" + "x" * 300]:
        response = client.post("/api/v1/runs", json=run_body(), headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401


def test_create_run_as_volunteer_is_403(client, volunteer):
    response = client.post("/api/v1/runs", json=run_body(), headers=volunteer.headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_create_run_with_taken_slug_is_409(client, organizer, run):
    response = client.post("/api/v1/runs", json=run_body(), headers=organizer.headers)
    assert response.status_code == 409


def test_malformed_run_bodies_are_422(client, organizer):
    bad_bodies = [
        run_body(slug="Not A Slug"),
        run_body(slug="new"),
        run_body(target_batch_size=0),
        run_body(auth_mode="everyone"),
        run_body(initial_peers=["not a multiaddr"]),
        run_body(allowlist=["bad name!"]),
        run_body(recipe={"name": ""}),
        run_body(dataset={"url": "ftp://example.org/x"}),
        run_body(unexpected=1),
        {"slug": "x"},
    ]
    for body in bad_bodies:
        response = client.post("/api/v1/runs", json=body, headers=organizer.headers)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "invalid_input"
        assert response.json()["error"]["fields"]
    response = client.post(
        "/api/v1/runs",
        content=b"{not json",
        headers={**organizer.headers, "content-type": "application/json"},
    )
    assert response.status_code == 422


def test_settings_peers_would_refuse_are_422_naming_the_section(client, organizer):
    cases = {
        "optimizer": run_body(optimizer={"name": "lamb"}),
        "compression": run_body(compression={"codec": "float17"}),
        "averaging": run_body(averaging={"min_group_size": 8, "target_group_size": 4}),
    }
    for field, body in cases.items():
        response = client.post("/api/v1/runs", json=body, headers=organizer.headers)
        assert response.status_code == 422, body
        fields = response.json()["error"]["fields"]
        assert set(fields) == {field}, fields
        assert "the manifest" not in fields[field] and field in fields[field]
    assert (
        "float16"
        in client.post("/api/v1/runs", json=cases["compression"], headers=organizer.headers).json()["error"][
            "fields"
        ]["compression"]
    )


def test_list_runs_paginates(client, organizer):
    for index in range(5):
        client.post("/api/v1/runs", json=run_body(slug=f"run-{index}"), headers=organizer.headers)
    page = client.get("/api/v1/runs", params={"limit": 2, "offset": 0}).json()
    assert page["total"] == 5 and page["limit"] == 2 and len(page["items"]) == 2
    rest = client.get("/api/v1/runs", params={"limit": 2, "offset": 4}).json()
    assert len(rest["items"]) == 1
    assert {item["slug"] for item in page["items"]}.isdisjoint({item["slug"] for item in rest["items"]})
    assert client.get("/api/v1/runs", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/runs", params={"limit": 1000}).status_code == 422


def test_get_run_and_unknown_run(client, run):
    assert client.get("/api/v1/runs/demo").json()["name"] == "Demo run"
    response = client.get("/api/v1/runs/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/runs/nope/manifest").status_code == 404


def test_manifest_matches_the_design(client, organizer):
    body = run_body(
        initial_peers=["/ip4/1.2.3.4/tcp/31337"],
        dataset={"url": "https://data.example.org/c4.tar", "sha256": "a" * 64, "format": "tar"},
    )
    created = client.post("/api/v1/runs", json=body, headers=organizer.headers).json()
    manifest = client.get("/api/v1/runs/demo/manifest").json()
    assert manifest["slug"] == "demo" and manifest["name"] == "Demo run"
    assert manifest["protocol_version"] == 1
    assert manifest["recipe"] == {"name": "albert", "config": {"seq_len": 512}}
    assert manifest["dataset"] == {
        "url": "https://data.example.org/c4.tar",
        "sha256": "a" * 64,
        "format": "tar",
    }
    assert manifest["target_batch_size"] == 4096
    assert manifest["optimizer"] == {"name": "adamw", "lr": 0.00176}
    assert manifest["averaging"] == {"target_group_size": 16}
    assert manifest["compression"] == {"gradients": "float16"}
    assert manifest["initial_peers"] == ["/ip4/1.2.3.4/tcp/31337"]
    assert manifest["auth"] == {
        "mode": "token",
        "authority_public_key": created["authority_public_key"],
        "token_url": "http://testserver/api/v1/runs/demo/access-tokens",
    }


def test_open_run_manifest_says_open(client, organizer):
    client.post("/api/v1/runs", json=run_body(auth_mode="open"), headers=organizer.headers)
    assert client.get("/api/v1/runs/demo/manifest").json()["auth"]["mode"] == "open"


def test_dataset_upload_stores_sha256(client, organizer, run, settings):
    data = b"line one\nline two\n" * 100
    response = client.put(
        "/api/v1/runs/demo/dataset",
        params={"filename": "../../etc/passwd", "format": "jsonl"},
        content=data,
        headers=organizer.headers,
    )
    assert response.status_code == 200, response.text
    dataset = response.json()
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest() and dataset["size_bytes"] == len(data)
    assert dataset["filename"] == "passwd"
    manifest = client.get("/api/v1/runs/demo/manifest").json()
    assert manifest["dataset"]["sha256"] == dataset["sha256"]
    download = client.get("/runs/demo/dataset")
    assert download.status_code == 200 and download.content == data
    assert [p.name for p in settings.upload_dir.iterdir()] == [
        p.name for p in settings.upload_dir.iterdir() if p.name.startswith("demo-")
    ]


def test_oversize_upload_is_413_and_leaves_no_file(client, organizer, run, settings):
    too_big = b"x" * (settings.max_upload_bytes + 1)
    response = client.put("/api/v1/runs/demo/dataset", content=too_big, headers=organizer.headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(settings.max_upload_bytes // 1024 + 2):
            yield b"y" * 1024

    response = client.put("/api/v1/runs/demo/dataset", content=chunks(), headers=organizer.headers)
    assert response.status_code == 413
    assert not settings.upload_dir.exists() or not any(settings.upload_dir.iterdir())
    assert client.get("/api/v1/runs/demo").json()["dataset"] is None


def test_upload_needs_the_runs_organizer(client, make_account, volunteer, run):
    other = make_account("otto", "organizer")
    assert client.put("/api/v1/runs/demo/dataset", content=b"x").status_code == 401
    assert client.put("/api/v1/runs/demo/dataset", content=b"x", headers=volunteer.headers).status_code == 403
    assert client.put("/api/v1/runs/demo/dataset", content=b"x", headers=other.headers).status_code == 403
    assert client.put("/api/v1/runs/nope/dataset", content=b"x", headers=other.headers).status_code == 404


def test_empty_upload_is_422(client, organizer, run):
    response = client.put("/api/v1/runs/demo/dataset", content=b"", headers=organizer.headers)
    assert response.status_code == 422


def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
