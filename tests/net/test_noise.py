"""Noise XX: our state machine agrees with itself and with an independent implementation."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.errors import HandshakeError
from peer.net.noise import XXHandshake, nonce_bytes


def _run(initiator: XXHandshake, responder: XXHandshake) -> None:
    assert responder.read_message(initiator.write_message(b"")) == b""
    assert initiator.read_message(responder.write_message(b"from responder")) == b"from responder"
    assert responder.read_message(initiator.write_message(b"from initiator")) == b"from initiator"


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_both_sides_agree_on_keys_statics_and_hash():
    initiator = XXHandshake(True, X25519PrivateKey.generate(), prologue=b"p")
    responder = XXHandshake(False, X25519PrivateKey.generate(), prologue=b"p")
    _run(initiator, responder)
    assert initiator.complete and responder.complete
    assert initiator.remote_static == responder.static_public
    assert responder.remote_static == initiator.static_public
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert (i_send, i_recv) == (r_recv, r_send) and i_send != i_recv


def test_a_different_prologue_breaks_the_handshake():
    initiator = XXHandshake(True, X25519PrivateKey.generate(), prologue=b"/hmp/1.0.0")
    responder = XXHandshake(False, X25519PrivateKey.generate(), prologue=b"/hmp/0.9.0")
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(HandshakeError, match="failed authentication"):
        initiator.read_message(responder.write_message(b""))


def test_a_tampered_handshake_message_fails():
    initiator = XXHandshake(True, X25519PrivateKey.generate())
    responder = XXHandshake(False, X25519PrivateKey.generate())
    responder.read_message(initiator.write_message(b""))
    message = bytearray(responder.write_message(b"payload"))
    message[40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError):
        initiator.read_message(bytes(message))


def test_messages_out_of_order_and_short_messages_are_refused():
    initiator = XXHandshake(True, X25519PrivateKey.generate())
    with pytest.raises(HandshakeError, match="out of order"):
        initiator.read_message(b"\0" * 32)
    responder = XXHandshake(False, X25519PrivateKey.generate())
    with pytest.raises(HandshakeError, match="too short"):
        responder.read_message(b"\0" * 10)
    with pytest.raises(HandshakeError, match="not complete"):
        responder.split()


def test_a_low_order_ephemeral_key_is_refused():
    initiator = XXHandshake(True, X25519PrivateKey.generate())
    responder = XXHandshake(False, X25519PrivateKey.generate())
    responder.read_message(b"\0" * 32)  # the all-zero point
    with pytest.raises(HandshakeError, match="invalid X25519 key"):
        responder.write_message(b"")
    del initiator


@pytest.mark.parametrize("we_initiate", [True, False])
def test_interoperates_with_an_independent_noise_implementation(we_initiate):
    if os.environ.get("CI") == "true":  # the dev extra installs noiseprotocol: CI must run this
        import noise.connection as noise
    else:
        noise = pytest.importorskip("noise.connection")
    ours_static, theirs_static = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ours = XXHandshake(we_initiate, ours_static, prologue=b"hello")
    theirs = noise.NoiseConnection.from_name(b"Noise_XX_25519_AESGCM_SHA256")
    theirs.set_as_responder() if we_initiate else theirs.set_as_initiator()
    theirs.set_keypair_from_private_bytes(noise.Keypair.STATIC, _raw(theirs_static))
    theirs.set_prologue(b"hello")
    theirs.start_handshake()
    if we_initiate:
        theirs.read_message(ours.write_message(b""))
        assert ours.read_message(theirs.write_message(b"m2")) == b"m2"
        assert theirs.read_message(ours.write_message(b"m3")) == b"m3"
    else:
        ours.read_message(theirs.write_message(b""))
        assert theirs.read_message(ours.write_message(b"m2")) == b"m2"
        assert ours.read_message(theirs.write_message(b"m3")) == b"m3"
    assert theirs.handshake_finished and ours.complete
    assert ours.handshake_hash == theirs.get_handshake_hash()
    send_key, recv_key = ours.split()
    # our transport keys are Noise's: the first transport messages decrypt on the other side
    assert theirs.decrypt(AESGCM(send_key).encrypt(nonce_bytes(0), b"ping", b"")) == b"ping"
    assert AESGCM(recv_key).decrypt(nonce_bytes(0), theirs.encrypt(b"pong"), b"") == b"pong"
