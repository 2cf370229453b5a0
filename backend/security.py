"""Secrets handling: argon2 passwords, hashed API keys and session tokens, signed CSRF tokens,
and the encryption at rest of run authority keys (AES-GCM under a key derived from the secret key)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_KEY_PREFIX = "hms_"
_password_hasher = PasswordHasher()
# Verified against when the account does not exist, so a miss costs as much time as a hit.
_DUMMY_HASH = _password_hasher.hash("not a real password")


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _password_hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh API key: a recognisable prefix and 256 random bits. Only its hash is stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def _derive(secret_key: str, purpose: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"hivemind-site", info=purpose)
    return hkdf.derive(secret_key.encode("utf-8"))


def new_csrf_token(secret_key: str) -> str:
    """A random value and its HMAC under the secret key: set as a cookie and echoed by every form."""
    nonce = secrets.token_urlsafe(24)
    mac = hmac.new(_derive(secret_key, b"csrf"), nonce.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{nonce}.{mac}"


def csrf_token_is_genuine(secret_key: str, token: str | None) -> bool:
    if not token or token.count(".") != 1:
        return False
    nonce, mac = token.split(".")
    expected = hmac.new(_derive(secret_key, b"csrf"), nonce.encode(), hashlib.sha256).hexdigest()[:32]
    return hmac.compare_digest(mac, expected)


class SecretBox:
    """Encrypts small secrets (authority private keys) with a key derived from the site secret."""

    _AD = b"hivemind-site run authority key v1"

    def __init__(self, secret_key: str):
        self._aead = AESGCM(_derive(secret_key, b"authority-key-encryption"))

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, self._AD)

    def decrypt(self, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], self._AD)
        except (InvalidTag, ValueError) as e:
            raise ValueError(
                "cannot decrypt a run authority key: the site's secret key changed since it was stored"
            ) from e
