"""The Noise XX handshake (Noise_XX_25519_AESGCM_SHA256), as a pure state machine.

This follows the Noise Protocol Framework, revision 34 (noiseprotocol.org/noise.html): sections 5.1
(CipherState), 5.2 (SymmetricState), 5.3 (HandshakeState) and the XX pattern

    -> e
    <- e, ee, s, es
    -> s, se

Primitives come from `cryptography`: X25519, AES-256-GCM and HMAC-SHA256 (for HKDF). No I/O happens
here: `write_message`/`read_message` turn payloads into handshake messages and back, and the
handshake driver (`peer.net.handshake`) moves them over the socket. After the third message,
`split()` returns the two transport keys. Any decryption failure raises `HandshakeError`.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.errors import HandshakeError

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(private_key: X25519PrivateKey, public_key: bytes) -> bytes:
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as e:  # a low-order point gives an all-zero shared secret
        raise HandshakeError(f"the remote sent an invalid X25519 key: {e}") from None


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (section 4.3)."""
    temp_key = hmac.new(chaining_key, input_key_material, hashlib.sha256).digest()
    output1 = hmac.new(temp_key, b"\x01", hashlib.sha256).digest()
    output2 = hmac.new(temp_key, output1 + b"\x02", hashlib.sha256).digest()
    return output1, output2


def nonce_bytes(counter: int) -> bytes:
    """The AES-GCM nonce for a counter: 32 zero bits then the 64-bit big-endian counter."""
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class CipherState:
    """A key and a nonce counter (section 5.1). Without a key it passes plaintext through."""

    __slots__ = ("_aead", "key", "nonce")

    def __init__(self, key: bytes | None = None):
        self.key = key
        self._aead = AESGCM(key) if key is not None else None
        self.nonce = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.nonce >= MAX_NONCE:
            raise HandshakeError("nonce space exhausted")
        ciphertext = self._aead.encrypt(nonce_bytes(self.nonce), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.nonce >= MAX_NONCE:
            raise HandshakeError("nonce space exhausted")
        try:
            plaintext = self._aead.decrypt(nonce_bytes(self.nonce), ciphertext, ad)
        except InvalidTag:
            raise HandshakeError(
                "a handshake message failed authentication (tampered or wrong key)"
            ) from None
        self.nonce += 1
        return plaintext


class SymmetricState:
    """The chaining key and handshake hash (section 5.2)."""

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME):
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\0")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_key = _hkdf(self.ck, input_key_material)
        self.cipher = CipherState(temp_key)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf(self.ck, b"")


class XXHandshake:
    """One side of a Noise XX handshake.

    The initiator calls write_message, read_message, write_message; the responder calls read_message,
    write_message, read_message. Then `split()` gives (send_key, receive_key) for this side, and
    `remote_static` holds the remote's X25519 static key, which the payload must bind to an identity.
    """

    def __init__(
        self,
        initiator: bool,
        static_key: X25519PrivateKey,
        prologue: bytes = b"",
        static_public: bytes | None = None,  # the static key's public bytes, when the caller has them
    ):
        self.initiator = initiator
        self._s = static_key
        self._s_public = static_public if static_public is not None else _public_bytes(static_key)
        self._e: X25519PrivateKey | None = None
        self.remote_static: bytes | None = None
        self._re: bytes | None = None
        self._state = SymmetricState()
        self._state.mix_hash(prologue)
        self._step = 0  # messages processed so far

    @property
    def static_public(self) -> bytes:
        return self._s_public

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def handshake_hash(self) -> bytes:
        """The final handshake hash h: a channel binding both sides share once complete."""
        return self._state.h

    def _expect(self, writing: bool) -> None:
        my_turn = (self._step % 2 == 0) == self.initiator
        if self._step >= 3 or my_turn != writing:
            raise HandshakeError("handshake message out of order")

    def write_message(self, payload: bytes) -> bytes:
        self._expect(writing=True)
        state, out = self._state, bytearray()
        if self._step in (0, 1):  # "e"
            self._e = X25519PrivateKey.generate()
            e_pub = _public_bytes(self._e)
            out += e_pub
            state.mix_hash(e_pub)
        if self._step == 1:  # responder: "ee", "s", "es"
            assert self._e is not None and self._re is not None
            state.mix_key(_dh(self._e, self._re))
            out += state.encrypt_and_hash(self.static_public)
            state.mix_key(_dh(self._s, self._re))
        elif self._step == 2:  # initiator: "s", "se"
            assert self._re is not None
            out += state.encrypt_and_hash(self.static_public)
            state.mix_key(_dh(self._s, self._re))
        out += state.encrypt_and_hash(payload)
        self._step += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        self._expect(writing=False)
        state, view = self._state, memoryview(message)
        if self._step in (0, 1):  # "e"
            if len(view) < DHLEN:
                raise HandshakeError("handshake message too short for an ephemeral key")
            self._re = bytes(view[:DHLEN])
            state.mix_hash(self._re)
            view = view[DHLEN:]
        if self._step == 1:  # initiator reads "ee", "s", "es"
            assert self._e is not None and self._re is not None
            state.mix_key(_dh(self._e, self._re))
            view, remote_static = self._read_static(view)
            state.mix_key(_dh(self._e, remote_static))
        elif self._step == 2:  # responder reads "s", "se"
            assert self._e is not None
            view, remote_static = self._read_static(view)
            state.mix_key(_dh(self._e, remote_static))
        payload = state.decrypt_and_hash(bytes(view))
        self._step += 1
        return payload

    def _read_static(self, view: memoryview) -> tuple[memoryview, bytes]:
        if len(view) < DHLEN + TAGLEN:
            raise HandshakeError("handshake message too short for a static key")
        self.remote_static = self._state.decrypt_and_hash(bytes(view[: DHLEN + TAGLEN]))
        return view[DHLEN + TAGLEN :], self.remote_static

    def split(self) -> tuple[bytes, bytes]:
        """(key for what this side sends, key for what it receives)."""
        if not self.complete:
            raise HandshakeError("the handshake is not complete")
        initiator_to_responder, responder_to_initiator = self._state.split()
        if self.initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder
