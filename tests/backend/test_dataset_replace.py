"""Replacing a run's dataset, on SQLite and PostgreSQL: upload over upload, URL over upload, upload
over URL, URL over URL and nothing over an upload all work; afterwards the upload folder holds exactly
the current file; a refused upload, a failed commit or a session closed without committing leave the
served dataset and its file as they were and no new file behind. (Replacing used to fail on the
unique run_id, after deleting the file still served.)"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from browser_helpers import running_site
from site_helpers import csrf_token, log_in, run_body
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import make_engine, make_session_factory
from backend.demo import DEMO_SLUG, _create_run, demo_corpus
from backend.models import Run, User
from backend.schemas import DatasetURL, RunCreate
from backend.services.api_keys import create_api_key
from backend.services.datasets import replace_dataset, store_upload
from backend.services.runs import create_run, get_run, set_dataset_url
from backend.services.users import create_user
from peer.net.identity import Identity

OLD, NEW = b"the old dataset\n" * 50, b"the new dataset\n" * 60


def _files(directory: Path) -> list[bytes]:
    """The contents of the files in the upload folder."""
    return sorted(path.read_bytes() for path in directory.iterdir()) if directory.exists() else []


def _put(client, account, data: bytes):
    return client.put(
        "/api/v1/runs/demo/dataset", params={"filename": "d.txt"}, content=data, headers=account.headers
    )


# Through the REST API and the pages


def test_upload_over_upload_serves_the_new_file_only(client, organizer, run, settings):
    assert _put(client, organizer, OLD).status_code == 200
    response = _put(client, organizer, NEW)
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == hashlib.sha256(NEW).hexdigest()
    assert client.get("/api/v1/runs/demo/manifest").json()["dataset"]["sha256"] == response.json()["sha256"]
    assert client.get("/runs/demo/dataset").content == NEW
    assert _files(settings.upload_dir) == [NEW]


def test_upload_over_url(client, organizer, settings):
    body = {"url": "https://data.example.org/c4.txt", "format": "text"}
    created = client.post("/api/v1/runs", json=run_body(dataset=body), headers=organizer.headers)
    assert created.status_code == 201 and created.json()["dataset"]["url"] == body["url"]
    response = _put(client, organizer, NEW)
    assert response.status_code == 200, response.text
    assert client.get("/runs/demo/dataset").content == NEW
    assert _files(settings.upload_dir) == [NEW]


@pytest.mark.parametrize("refused", ["too big", "empty"])
def test_a_refused_upload_keeps_the_served_dataset(client, organizer, run, settings, refused):
    assert _put(client, organizer, OLD).status_code == 200
    data = b"z" * (settings.max_upload_bytes + 1) if refused == "too big" else b""
    assert _put(client, organizer, data).status_code in (413, 422)
    assert (
        client.get("/api/v1/runs/demo/manifest").json()["dataset"]["sha256"]
        == hashlib.sha256(OLD).hexdigest()
    )
    assert client.get("/runs/demo/dataset").content == OLD
    assert _files(settings.upload_dir) == [OLD]


def test_edit_page_replaces_an_upload_with_an_upload_and_then_a_url(client, organizer, run, settings):
    assert _put(client, organizer, OLD).status_code == 200
    log_in(client, "olga@example.org")
    token = csrf_token(client, "/runs/demo/edit")
    form = {
        "csrf_token": token,
        "name": "Demo run",
        "recipe_name": "albert",
        "recipe_config": "{}",
        "target_batch_size": "4096",
        "auth_mode": "volunteers",
        "dataset_format": "text",
    }
    response = client.post(
        "/runs/demo/edit",
        data={**form, "dataset_kind": "upload"},
        files={"dataset_file": ("new.txt", NEW)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert client.get("/runs/demo/dataset").content == NEW
    assert _files(settings.upload_dir) == [NEW]
    url = "https://data.example.org/new.txt"
    response = client.post(
        "/runs/demo/edit", data={**form, "dataset_kind": "url", "dataset_url": url}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert client.get("/api/v1/runs/demo").json()["dataset"]["url"] == url


# Through the services, with the commit (or its failure) in the test's hands


@pytest.fixture
def olga_run(db, organizer) -> Run:
    data = RunCreate(slug="demo", name="Demo", recipe={"name": "albert"}, target_batch_size=64)
    run = create_run(db, owner=organizer.user, data=data, secret_key=secrets.token_urlsafe(32))
    db.commit()
    return run


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    yield data[len(data) // 2 :]


def _apply(session: Session, run: Run, kind: str, data: bytes, upload_dir: Path) -> None:
    if kind == "upload":
        upload = store_upload(
            session,
            run=run,
            chunks=_chunks(data),
            filename="d.txt",
            data_format="text",
            upload_dir=upload_dir,
            max_bytes=10_000,
        )
        asyncio.run(upload)
    elif kind == "url":
        url = f"https://data.example.org/{hashlib.sha256(data).hexdigest()}.txt"
        set_dataset_url(session, run=run, dataset=DatasetURL(url=url), upload_dir=upload_dir)
    else:
        replace_dataset(session, run=run, dataset=None, upload_dir=upload_dir)


def _served(session: Session, upload_dir: Path) -> tuple[str, bytes] | None:
    """The committed dataset of run demo, read afresh: ("upload", its file's bytes) or ("url", url)."""
    session.expire_all()
    dataset = get_run(session, slug="demo").dataset
    if dataset is None:
        return None
    if dataset.kind == "url":
        assert dataset.url is not None
        return "url", dataset.url.encode()
    assert dataset.storage_name is not None
    return "upload", (upload_dir / dataset.storage_name).read_bytes()


@pytest.mark.parametrize(
    ("first", "second"),
    [("upload", "upload"), ("upload", "url"), ("url", "upload"), ("url", "url"), ("upload", "none")],
)
def test_every_replacement_order(db, olga_run, tmp_path, first, second):
    upload_dir = tmp_path / "uploads"
    _apply(db, olga_run, first, OLD, upload_dir)
    db.commit()
    _apply(db, olga_run, second, NEW, upload_dir)
    db.commit()
    served = _served(db, upload_dir)
    if second == "upload":
        assert served == ("upload", NEW)
    elif second == "url":
        assert served is not None and served[0] == "url"
        assert served[1].decode().endswith(hashlib.sha256(NEW).hexdigest() + ".txt")
    else:
        assert served is None
    assert _files(upload_dir) == ([NEW] if second == "upload" else [])


def _break_the_commit(session: Session, organizer) -> None:
    """A second account with the organizer's username: the commit's flush violates a unique index."""
    session.add(User(email="other@example.org", username=organizer.username, password_hash="x"))


@pytest.mark.parametrize("second", ["upload", "url", "none"])
def test_a_failed_commit_keeps_the_old_file_and_drops_the_new(db, organizer, olga_run, tmp_path, second):
    upload_dir = tmp_path / "uploads"
    _apply(db, olga_run, "upload", OLD, upload_dir)
    db.commit()
    _apply(db, olga_run, second, NEW, upload_dir)
    _break_the_commit(db, organizer)
    with pytest.raises(IntegrityError):
        db.commit()
    db.rollback()
    assert _served(db, upload_dir) == ("upload", OLD)
    assert _files(upload_dir) == [OLD]
    _apply(db, get_run(db, slug="demo"), second, NEW, upload_dir)  # the session works on
    db.commit()
    assert _files(upload_dir) == ([NEW] if second == "upload" else [])


def test_a_session_closed_without_commit_drops_its_upload(db, connection, olga_run, tmp_path):
    upload_dir = tmp_path / "uploads"
    _apply(db, olga_run, "upload", OLD, upload_dir)
    db.commit()
    with Session(bind=connection, join_transaction_mode="create_savepoint") as other:
        _apply(other, get_run(other, slug="demo"), "upload", NEW, upload_dir)
        _apply(other, get_run(other, slug="demo"), "upload", NEW + NEW, upload_dir)
        assert len(_files(upload_dir)) == 3
    assert _served(db, upload_dir) == ("upload", OLD)
    assert _files(upload_dir) == [OLD]


def test_two_uploads_in_one_transaction_keep_only_the_last(db, olga_run, tmp_path):
    upload_dir = tmp_path / "uploads"
    _apply(db, olga_run, "upload", OLD, upload_dir)
    db.commit()
    _apply(db, olga_run, "upload", NEW, upload_dir)
    _apply(db, olga_run, "upload", NEW + NEW, upload_dir)
    db.commit()
    assert _served(db, upload_dir) == ("upload", NEW + NEW)
    assert _files(upload_dir) == [NEW + NEW]


# The demo's own path: `hivemind-site demo` run twice on one folder uploads the corpus twice


@pytest.mark.timeout(120)
def test_demo_create_run_twice_on_a_running_site(tmp_path):
    with running_site(tmp_path) as base_url:
        engine = make_engine(f"sqlite:///{tmp_path / 'site.db'}")
        try:
            with make_session_factory(engine)() as session:
                user = create_user(
                    session,
                    email="o@demo.invalid",
                    username="organizer",
                    password="a long password",
                    role="organizer",
                )
                _, key = create_api_key(session, user=user, name="demo")
                session.commit()
        finally:
            engine.dispose()
        bootstrap = f"/ip4/127.0.0.1/tcp/9/p2p/{Identity.generate().peer_id.to_base58()}"
        _create_run(base_url, key, bootstrap)
        _create_run(base_url, key, bootstrap)
        download = httpx.get(f"{base_url}/runs/{DEMO_SLUG}/dataset", timeout=30)
        assert download.status_code == 200 and download.content == demo_corpus()
        assert _files(tmp_path / "uploads") == [demo_corpus()]
