"""The browser pages through the test client: accounts, CSRF, API keys, run forms, safe Markdown."""

from __future__ import annotations

import re

from site_helpers import PASSWORD, csrf_token, log_in, run_body
from sqlalchemy import select

from backend.models import Run, User


def _sign_up(client, username, role="volunteer", password=PASSWORD):
    token = csrf_token(client, "/signup")
    return client.post(
        "/signup",
        data={
            "csrf_token": token,
            "email": f"{username}@example.org",
            "username": username,
            "password": password,
            "role": role,
        },
        follow_redirects=False,
    )


def test_sign_up_logs_in_with_a_secure_session_cookie(client, db):
    response = _sign_up(client, "nina")
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "hms_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "nina (volunteer)" in client.get("/").text


def test_password_is_never_stored_in_clear(client, db):
    _sign_up(client, "nina")
    user = db.scalar(select(User).where(User.username == "nina"))
    assert PASSWORD not in user.password_hash and user.password_hash.startswith("$argon2id$")


def test_sign_up_errors_are_shown_next_to_fields(client):
    response = _sign_up(client, "x", password="short")
    assert response.status_code == 422
    assert 'id="username-error"' in response.text and 'id="password-error"' in response.text
    htmx = client.post(
        "/signup",
        data={
            "csrf_token": csrf_token(client, "/signup"),
            "email": "bad",
            "username": "ok-name",
            "password": "p",
        },
        headers={"HX-Request": "true"},
    )
    assert htmx.status_code == 422 and htmx.text.lstrip().startswith("<form")
    assert 'id="email-error"' in htmx.text


def test_duplicate_account_is_refused(client, volunteer):
    response = _sign_up(client, "victor")
    assert response.status_code == 422 and "already exists" in response.text


def test_cannot_sign_up_as_admin(client):
    assert _sign_up(client, "eve", role="admin").status_code == 422


def test_form_post_without_csrf_token_is_refused(client, volunteer):
    client.get("/login")  # has the CSRF cookie, but does not echo it
    response = client.post("/login", data={"email": "victor@example.org", "password": PASSWORD})
    assert response.status_code == 403 and "CSRF" in response.text
    response = client.post(
        "/login", data={"csrf_token": "forged.token", "email": "victor@example.org", "password": PASSWORD}
    )
    assert response.status_code == 403
    assert log_in(client, "victor@example.org").status_code == 303


def test_csrf_header_works_for_htmx(client, volunteer):
    log_in(client, "victor@example.org")
    token = csrf_token(client, "/account/keys")
    response = client.post(
        "/account/keys", data={"name": "laptop"}, headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert response.status_code == 200 and "hms_" in response.text
    assert (
        client.post("/account/keys", data={"name": "x"}, headers={"X-CSRF-Token": "nope"}).status_code == 403
    )


def test_logout_ends_the_session(client, volunteer):
    log_in(client, "victor@example.org")
    assert client.get("/account/keys").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    response = client.get("/account/keys", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_repeated_failed_logins_lock_the_account(client, volunteer, settings):
    for _ in range(settings.login_max_failures):
        assert log_in(client, "victor@example.org", "wrong password").status_code == 422
    locked = log_in(client, "victor@example.org")  # even the right password, while locked
    assert locked.status_code == 429 and "locked" in locked.text


def test_api_key_works_only_until_revoked(client, run, volunteer):
    log_in(client, "victor@example.org")
    token = csrf_token(client, "/account/keys")
    page = client.post("/account/keys", data={"csrf_token": token, "name": "laptop"})
    key = re.search(r'id="new-api-key">(hms_[^<]+)<', page.text).group(1)
    assert "not be shown again" in page.text
    assert key not in client.get("/account/keys").text  # shown once
    body = {"peer_public_key": "12D3KooWDarG8ruprpvZA7FnYVfYZzqqoJL73XQwU9BjohJ6vEjx"}
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/api/v1/runs/demo/access-tokens", json=body, headers=headers).status_code == 200
    key_id = re.findall(r"/account/keys/(\d+)/revoke", client.get("/account/keys").text)[0]
    client.post(f"/account/keys/{key_id}/revoke", data={"csrf_token": token})
    assert client.post("/api/v1/runs/demo/access-tokens", json=body, headers=headers).status_code == 401


def test_api_key_is_stored_as_a_hash(client, volunteer, db):
    from backend.models import ApiKey

    row = db.scalar(select(ApiKey).where(ApiKey.user_id == volunteer.user.id))
    assert volunteer.api_key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64


def _run_form(token, **overrides):
    data = {
        "csrf_token": token,
        "name": "Web run",
        "slug": "web-run",
        "description": "Hello",
        "recipe_name": "albert",
        "recipe_config": '{"seq_len": 128}',
        "target_batch_size": "1024",
        "optimizer": '{"name": "adamw"}',
        "averaging": "",
        "compression": "",
        "auth_mode": "volunteers",
        "allowlist": "",
        "initial_peers": "",
        "dataset_kind": "none",
    }
    data.update(overrides)
    return data


def test_organizer_creates_a_run_with_an_upload(client, organizer, db):
    log_in(client, "olga@example.org")
    token = csrf_token(client, "/runs/new")
    response = client.post(
        "/runs/new",
        data=_run_form(token, dataset_kind="upload", dataset_format="jsonl"),
        files={"dataset_file": ("train.jsonl", b'{"text": "hi"}\n')},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = client.get("/runs/web-run").text
    assert "hivemind-peer join http://testserver/runs/web-run" in page
    manifest = client.get("/api/v1/runs/web-run/manifest").json()
    assert manifest["recipe"]["config"] == {"seq_len": 128} and len(manifest["dataset"]["sha256"]) == 64


def test_run_form_errors_are_next_to_their_fields(client, organizer):
    log_in(client, "olga@example.org")
    token = csrf_token(client, "/runs/new")
    form = _run_form(token, slug="Bad Slug", target_batch_size="-3", optimizer="{nope", initial_peers="junk")
    response = client.post("/runs/new", data=form, headers={"HX-Request": "true"})
    assert response.status_code == 422
    for field in ("slug", "target_batch_size", "optimizer", "initial_peers"):
        assert f'id="{field}-error"' in response.text, field
    assert 'value="Web run"' in response.text  # what was typed is kept


def test_oversize_form_upload_is_refused(client, organizer, settings):
    log_in(client, "olga@example.org")
    token = csrf_token(client, "/runs/new")
    response = client.post(
        "/runs/new",
        data=_run_form(token, dataset_kind="upload"),
        files={"dataset_file": ("big.bin", b"z" * (settings.max_upload_bytes + 10))},
    )
    assert response.status_code == 422 and 'id="dataset_file-error"' in response.text
    assert client.get("/runs/web-run").status_code == 404
    huge = b"z" * (settings.max_upload_bytes + 512 * 1024)
    response = client.post(
        "/runs/new", data=_run_form(token, dataset_kind="upload"), files={"dataset_file": ("h", huge)}
    )
    assert response.status_code == 413


def test_volunteer_cannot_open_the_run_form(client, volunteer):
    log_in(client, "victor@example.org")
    assert client.get("/runs/new").status_code == 403


def test_organizer_edits_pauses_and_archives(client, organizer, make_account, run, db):
    log_in(client, "olga@example.org")
    token = csrf_token(client, "/runs/demo/edit")
    response = client.post(
        "/runs/demo/edit", data=_run_form(token, name="Renamed", dataset_kind="keep"), follow_redirects=False
    )
    assert response.status_code == 303
    assert client.get("/api/v1/runs/demo").json()["name"] == "Renamed"
    client.post("/runs/demo/status/paused", data={"csrf_token": token})
    assert client.get("/api/v1/runs/demo").json()["status"] == "paused"
    client.post("/runs/demo/status/archived", data={"csrf_token": token})
    assert db.scalar(select(Run.status).where(Run.slug == "demo")) == "archived"
    assert client.post("/runs/demo/status/active", data={"csrf_token": token}).status_code == 409


def test_only_the_owner_manages_a_run(client, make_account, run):
    make_account("otto", "organizer")
    log_in(client, "otto@example.org")
    assert client.get("/runs/demo/edit").status_code == 403
    token = csrf_token(client, "/")
    assert client.post("/runs/demo/status/paused", data={"csrf_token": token}).status_code == 403


def test_hostile_description_renders_inert(client, organizer):
    hostile = (
        "<script>alert('x')</script>\n\n[click](javascript:alert(1))\n\n"
        '<img src=x onerror="alert(1)">\n\n<a href="#" onclick="steal()">hi</a>'
    )
    client.post("/api/v1/runs", json=run_body(description=hostile), headers=organizer.headers)
    page = client.get("/runs/demo")
    section = re.search(r'<section class="description">(.*?)</section>', page.text, re.S).group(1)
    tags = re.findall(r"<[a-zA-Z][^>]*>", section)
    assert tags, section
    for tag in tags:  # every real element is harmless: no scripts, handlers or javascript: URLs
        assert not tag.lower().startswith(("<script", "<img", "<iframe")), tag
        assert not re.search(r"\son\w+=|javascript:", tag, re.I), tag
    assert "&lt;script&gt;" in section  # shown as text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_admin_deactivates_a_user(client, make_account, volunteer, run):
    make_account("ada", "admin")
    log_in(client, "ada@example.org")
    page = client.get("/admin/users").text
    user_id = re.search(
        r'/admin/users/(\d+)/deactivate"[^>]*>\s*<input type="hidden" name="csrf_token"', page
    )
    assert user_id
    target = volunteer.user.id
    client.post(f"/admin/users/{target}/deactivate", data={"csrf_token": csrf_token(client, "/admin/users")})
    body = {"peer_public_key": "12D3KooWDarG8ruprpvZA7FnYVfYZzqqoJL73XQwU9BjohJ6vEjx"}
    assert (
        client.post("/api/v1/runs/demo/access-tokens", json=body, headers=volunteer.headers).status_code
        == 401
    )
    assert log_in(client, "victor@example.org").status_code == 422


def test_non_admin_cannot_see_users(client, volunteer):
    log_in(client, "victor@example.org")
    assert client.get("/admin/users").status_code == 403
