"""Identity: Ed25519 key files (mode 0600), stable PeerIDs, libp2p's PeerID encoding."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.errors import IdentityError
from peer.net.identity import Identity, PeerID, b58decode, b58encode, serialize_public_key


def test_base58_matches_the_bitcoin_alphabet():
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58encode(b"\0\0\x01") == "112"
    assert b58decode("StV1DL6CwTryKyV") == b"hello world"
    with pytest.raises(ValueError, match="invalid base58"):
        b58decode("0OIl")


@given(st.binary(max_size=64))
def test_base58_round_trips(data):
    assert b58decode(b58encode(data)) == data


def test_peer_id_is_the_identity_multihash_of_the_libp2p_public_key():
    identity = Identity.generate()
    encoded = serialize_public_key(identity.public_key)
    assert encoded[:4] == bytes([0x08, 0x01, 0x12, 0x20])  # KeyType Ed25519, 32 bytes of data
    assert identity.peer_id.to_bytes() == bytes([0x00, 36]) + encoded
    text = str(identity.peer_id)
    assert text.startswith("12D3KooW") and len(text) == 52
    assert PeerID.from_base58(text) == identity.peer_id
    assert hash(PeerID.from_base58(text)) == hash(identity.peer_id)
    assert identity.peer_id.public_key() == identity.public_key


def test_malformed_peer_ids_are_rejected():
    with pytest.raises(ValueError, match="not a valid PeerID"):
        PeerID.from_base58("12D3KooW")
    with pytest.raises(ValueError):
        PeerID(b"\x00\x05abc")
    with pytest.raises(TypeError):
        PeerID("12D3KooW")  # type: ignore[arg-type]


def test_key_file_is_created_owner_only_and_gives_the_same_peer_id(tmp_path):
    path = tmp_path / "keys" / "peer.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load_or_create(path).peer_id == first.peer_id
    assert Identity.load(path).peer_id == first.peer_id
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        first.save(path)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "peer.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


def test_a_file_without_a_key_is_refused(tmp_path):
    path = tmp_path / "peer.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="PEM"):
        Identity.load(path)


def test_signatures_verify_only_for_their_data():
    from peer.net.identity import verify_signature

    identity = Identity.generate()
    signature = identity.sign(b"data")
    assert verify_signature(identity.public_key, signature, b"data")
    assert not verify_signature(identity.public_key, signature, b"other")
    assert not verify_signature(Identity.generate().public_key, signature, b"data")
