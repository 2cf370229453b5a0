"""Access tokens: encoding, signing, and the handshake authorizer's checks."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import AuthorizationError
from peer.net.identity import Identity, PeerID, serialize_public_key
from peer.net.tokens import (
    AccessToken,
    AccessTokenAuthority,
    TokenAuthorizer,
    load_authority_public_key,
    parse_peer_public_key,
)

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def authority() -> AccessTokenAuthority:
    return AccessTokenAuthority.generate()


@pytest.fixture(scope="module")
def volunteer() -> Identity:
    return Identity.generate()


def _authorizer(authority, run="demo", now=NOW, token=None):
    async def provider():
        return token

    return TokenAuthorizer(authority.public_key, run, provider, clock=lambda: now)


def _check(authorizer, peer_id, token):
    asyncio.run(authorizer.check(peer_id, token))


def test_issued_token_round_trips_through_bytes_and_text(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 3600, now=NOW)
    assert token.issued_at == NOW and token.expires_at == NOW + 3600
    assert AccessToken.from_bytes(token.to_bytes()) == token
    assert AccessToken.from_text(token.to_text()) == token
    assert "=" not in token.to_text()
    assert token.verify(authority.public_key)


def test_encoding_is_deterministic_and_versioned(authority, volunteer):
    token = authority.issue("alice", volunteer.public_key, "demo", 60, now=NOW)
    payload, signature = msgpack.unpackb(token.to_bytes())
    assert msgpack.unpackb(payload) == [1, "alice", volunteer.peer_id.to_bytes(), "demo", NOW, NOW + 60]
    assert token.to_bytes() == dataclasses.replace(token).to_bytes()
    assert len(signature) == 64


def test_authorizer_accepts_a_valid_token(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 3600, now=NOW)
    authorizer = _authorizer(authority, token=token.to_bytes())
    _check(authorizer, volunteer.peer_id, token.to_bytes())
    assert asyncio.run(authorizer.get_token()) == token.to_bytes()
    assert authorizer.validate(volunteer.peer_id, token.to_bytes()).username == "alice"


def test_authorizer_refuses_a_missing_token(authority, volunteer):
    with pytest.raises(AuthorizationError, match="no access token"):
        _check(_authorizer(authority), volunteer.peer_id, None)


def test_authorizer_refuses_another_authoritys_token(authority, volunteer):
    forged = AccessTokenAuthority.generate().issue("alice", volunteer.peer_id, "demo", 3600, now=NOW)
    with pytest.raises(AuthorizationError, match="not signed"):
        _check(_authorizer(authority), volunteer.peer_id, forged.to_bytes())


def test_authorizer_refuses_a_tampered_token(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 3600, now=NOW)
    tampered = dataclasses.replace(token, username="mallory")
    with pytest.raises(AuthorizationError, match="not signed"):
        _check(_authorizer(authority), volunteer.peer_id, tampered.to_bytes())


def test_authorizer_refuses_a_token_for_another_run(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "other-run", 3600, now=NOW)
    with pytest.raises(AuthorizationError, match="other-run"):
        _check(_authorizer(authority), volunteer.peer_id, token.to_bytes())


def test_authorizer_refuses_a_token_shown_by_another_peer(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 3600, now=NOW)
    thief = Identity.generate().peer_id
    with pytest.raises(AuthorizationError, match="another peer"):
        _check(_authorizer(authority), thief, token.to_bytes())


def test_authorizer_refuses_an_expired_token_beyond_the_clock_skew(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 100, now=NOW)
    _check(_authorizer(authority, now=NOW + 100 + 30), volunteer.peer_id, token.to_bytes())  # skew
    with pytest.raises(AuthorizationError, match="expired"):
        _check(_authorizer(authority, now=NOW + 100 + 61), volunteer.peer_id, token.to_bytes())


def test_authorizer_refuses_a_token_from_the_future(authority, volunteer):
    token = authority.issue("alice", volunteer.peer_id, "demo", 100, now=NOW + 3600)
    with pytest.raises(AuthorizationError, match="not valid yet"):
        _check(_authorizer(authority), volunteer.peer_id, token.to_bytes())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        msgpack.packb([b"x", b"y"]),
        msgpack.packb([msgpack.packb([2, "a"]), b"s" * 64]),
        msgpack.packb([msgpack.packb([1, "a", b"\x00\x01", "r", 1, 2]), b"s" * 64]),
        msgpack.packb([msgpack.packb([1, "a", b"\x00\x00", "r", 5, 2]), b"s" * 64]),
        msgpack.packb([msgpack.packb([True, "a"]), b"s" * 64]),
        msgpack.packb({"a": 1}),
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b"x" * 5000,
    ],
)
def test_hostile_bytes_raise_value_error(data):
    with pytest.raises(ValueError):
        AccessToken.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_random_bytes_never_crashes(data):
    try:
        AccessToken.from_bytes(data)
    except ValueError:
        pass


def test_hostile_text_raises_value_error():
    for text in ["", "!!!", "a" * 10_000, "AAAA"]:
        with pytest.raises(ValueError):
            AccessToken.from_text(text)


def test_garbage_token_is_refused_with_an_authorization_error(authority, volunteer):
    with pytest.raises(AuthorizationError, match="malformed"):
        _check(_authorizer(authority), volunteer.peer_id, b"\x00garbage")


def test_parse_peer_public_key_accepts_both_forms(volunteer):
    assert parse_peer_public_key(str(volunteer.peer_id)) == volunteer.peer_id
    encoded = base64.b64encode(serialize_public_key(volunteer.public_key)).decode()
    assert parse_peer_public_key(encoded) == volunteer.peer_id
    for bad in ["", "hello", "12D3KooWnotreally", base64.b64encode(b"x" * 36).decode()]:
        with pytest.raises(ValueError):
            parse_peer_public_key(bad)


def test_authority_keys_round_trip(authority):
    clone = AccessTokenAuthority.from_private_bytes(authority.private_bytes())
    assert clone.public_key_bytes() == authority.public_key_bytes()
    loaded = load_authority_public_key(authority.public_key_text())
    assert loaded.public_bytes_raw() == authority.public_key_bytes()
    with pytest.raises(ValueError):
        load_authority_public_key("not base64!")
    with pytest.raises(ValueError):
        AccessTokenAuthority.from_private_bytes(b"short")


def test_invalid_arguments_are_refused(authority, volunteer):
    with pytest.raises(ValueError, match="lifetime"):
        authority.issue("alice", volunteer.peer_id, "demo", 0)
    with pytest.raises(TypeError, match="peer"):
        authority.issue("alice", "12D3KooW", "demo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="username"):
        authority.issue("", volunteer.peer_id, "demo")
    with pytest.raises(ValueError, match="unsigned"):
        AccessToken("alice", volunteer.peer_id, "demo", 1, 2).to_bytes()
    assert isinstance(volunteer.peer_id, PeerID)
