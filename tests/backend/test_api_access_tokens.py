"""POST /api/v1/runs/{slug}/access-tokens on SQLite and PostgreSQL, checked with `peer`'s verifier."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from site_helpers import run_body
from sqlalchemy import select

from backend.models import TokenIssuance
from backend.services.users import set_user_active
from peer.errors import AuthorizationError
from peer.net.identity import Identity, serialize_public_key
from peer.net.tokens import AccessToken, TokenAuthorizer


def _request_token(client, account, peer_public_key, slug="demo"):
    return client.post(
        f"/api/v1/runs/{slug}/access-tokens",
        json={"peer_public_key": peer_public_key},
        headers=account.headers,
    )


def _verify(body, identity, run="demo"):
    async def provider():
        return None

    authorizer = TokenAuthorizer(body["authority_public_key"], run, provider)
    token = AccessToken.from_text(body["token"])
    asyncio.run(authorizer.check(identity.peer_id, token.to_bytes()))
    return token


def test_volunteer_gets_a_token_that_peer_verifies(client, run, volunteer, db):
    identity = Identity.generate()
    response = _request_token(client, volunteer, str(identity.peer_id))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "victor" and body["peer_id"] == str(identity.peer_id)
    assert body["authority_public_key"] == run["authority_public_key"]
    token = _verify(body, identity)
    assert token.username == "victor" and token.run == "demo" and token.expires_at == body["expires_at"]
    assert abs(token.expires_at - time.time() - 6 * 3600) < 60
    issuance = db.scalars(select(TokenIssuance)).all()
    assert [(row.peer_id, row.user_id) for row in issuance] == [(str(identity.peer_id), volunteer.user.id)]


def test_base64_public_key_form_is_accepted(client, run, volunteer):
    identity = Identity.generate()
    encoded = base64.b64encode(serialize_public_key(identity.public_key)).decode()
    response = _request_token(client, volunteer, encoded)
    assert response.status_code == 200
    _verify(response.json(), identity)


def test_token_for_one_peer_is_refused_for_another(client, run, volunteer):
    identity = Identity.generate()
    body = _request_token(client, volunteer, str(identity.peer_id)).json()
    with pytest.raises(AuthorizationError, match="another peer"):
        _verify(body, Identity.generate())


def test_no_key_and_wrong_key_are_401(client, run):
    identity = Identity.generate()
    response = client.post("/api/v1/runs/demo/access-tokens", json={"peer_public_key": str(identity.peer_id)})
    assert response.status_code == 401
    response = client.post(
        "/api/v1/runs/demo/access-tokens",
        json={"peer_public_key": str(identity.peer_id)},
        headers={"Authorization": "Bearer hms_wrong"},
    )
    assert response.status_code == 401


def test_malformed_bodies_are_422(client, run, volunteer):
    for body in [{}, {"peer_public_key": ""}, {"peer_public_key": "hello"}, {"peer_public_key": 5}, []]:
        response = client.post("/api/v1/runs/demo/access-tokens", json=body, headers=volunteer.headers)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "invalid_input"


def test_unknown_run_is_404(client, volunteer):
    assert _request_token(client, volunteer, str(Identity.generate().peer_id), slug="nope").status_code == 404


def test_allowlist_refuses_others(client, organizer, make_account):
    allowed, refused = make_account("alice"), make_account("mallory")
    client.post(
        "/api/v1/runs", json=run_body(auth_mode="allowlist", allowlist=["alice"]), headers=organizer.headers
    )
    identity = Identity.generate()
    assert _request_token(client, allowed, str(identity.peer_id)).status_code == 200
    response = _request_token(client, refused, str(identity.peer_id))
    assert response.status_code == 403
    assert "allowlist" in response.json()["error"]["message"]
    assert _request_token(client, organizer, str(identity.peer_id)).status_code == 200  # the owner


def test_archived_run_issues_no_tokens(client, run, volunteer, db):
    from backend.models import Run, RunStatus
    from backend.services.runs import set_run_status

    set_run_status(db, run=db.scalar(select(Run)), status=RunStatus.archived)
    db.commit()
    assert _request_token(client, volunteer, str(Identity.generate().peer_id)).status_code == 409


def test_deactivated_user_gets_no_new_tokens(client, run, volunteer, db):
    identity = Identity.generate()
    assert _request_token(client, volunteer, str(identity.peer_id)).status_code == 200
    set_user_active(db, user=volunteer.user, active=False)
    db.commit()
    assert _request_token(client, volunteer, str(identity.peer_id)).status_code == 401


def test_authority_key_is_encrypted_at_rest(db, run):
    from backend.models import RunAuthorityKey
    from backend.security import SecretBox

    row = db.scalar(select(RunAuthorityKey))
    assert base64.b64encode(row.public_key).decode() == run["authority_public_key"]
    assert len(row.encrypted_private_key) > 32
    with pytest.raises(ValueError, match="secret key changed"):
        SecretBox("another-secret-" + "x" * 40).decrypt(row.encrypted_private_key)
