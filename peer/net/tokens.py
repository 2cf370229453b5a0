"""Access tokens: a run authority's signed statement that a user's peer may join a run.

A token binds a username, the volunteer peer's `PeerID`, a run slug and a validity window, and is
signed with the run authority's Ed25519 key. Peers check tokens in the secure handshake through
`TokenAuthorizer` and need nothing from the site to do so: only the authority's public key, which
the run manifest carries.

Wire form (deterministic msgpack)::

    token   = [payload: bin, signature: bin]           # the signature covers the payload bytes
    payload = [version=1, username: str, peer_id: bin, run: str, issued_at: int, expires_at: int]

`AccessToken.to_text()` is the unpadded base64url of the token bytes, for JSON and HTTP headers.

    AccessToken            the decoded token (a frozen dataclass) with encode/decode/verify
    AccessTokenAuthority   holds a run's private key and issues tokens (used by the site)
    TokenAuthorizer        a `peer.net.auth.Authorizer` that presents our token and checks the remote's
    parse_peer_public_key  a PeerID from its base58 form or a base64 libp2p-serialized public key
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from collections.abc import Awaitable, Callable

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from peer.errors import AuthorizationError
from peer.net.auth import Authorizer
from peer.net.identity import (
    ED25519_PUBLIC_KEY_SIZE,
    PeerID,
    deserialize_public_key,
    verify_signature,
)

TOKEN_VERSION = 1
DEFAULT_TOKEN_LIFETIME = 6 * 3600.0
DEFAULT_CLOCK_SKEW = 60.0
MAX_TOKEN_SIZE = 2048  # bytes; a real token is about 200
MAX_USERNAME_LENGTH = 64
MAX_RUN_LENGTH = 128
_SIGNATURE_SIZE = 64

TokenProvider = Callable[[], Awaitable["bytes | None"]]


@dataclasses.dataclass(frozen=True)
class AccessToken:
    """A run authority's permission for `peer_id` (owned by `username`) to join `run`."""

    username: str
    peer_id: PeerID
    run: str
    issued_at: int
    expires_at: int
    signature: bytes = b""

    def __post_init__(self):
        if not isinstance(self.username, str) or not 0 < len(self.username) <= MAX_USERNAME_LENGTH:
            raise ValueError(f"username must be a string of 1 to {MAX_USERNAME_LENGTH} characters")
        if not isinstance(self.peer_id, PeerID):
            raise TypeError(f"peer_id must be a PeerID, not {type(self.peer_id).__name__}")
        if not isinstance(self.run, str) or not 0 < len(self.run) <= MAX_RUN_LENGTH:
            raise ValueError(f"run must be a string of 1 to {MAX_RUN_LENGTH} characters")
        for name in ("issued_at", "expires_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be a non-negative integer of unix seconds")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be later than issued_at")
        if not isinstance(self.signature, bytes):
            raise TypeError("signature must be bytes")

    def payload_bytes(self) -> bytes:
        """The signed part, encoded deterministically."""
        fields = [
            TOKEN_VERSION,
            self.username,
            self.peer_id.to_bytes(),
            self.run,
            self.issued_at,
            self.expires_at,
        ]
        return msgpack.packb(fields, use_bin_type=True)

    def to_bytes(self) -> bytes:
        if not self.signature:
            raise ValueError("an unsigned token cannot be serialized; sign it with an AccessTokenAuthority")
        return msgpack.packb([self.payload_bytes(), self.signature], use_bin_type=True)

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self.to_bytes()).rstrip(b"=").decode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> AccessToken:
        """Decode a token; ValueError (never another exception) for anything malformed.

        This does not check the signature: call `verify` or use `TokenAuthorizer`.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("an access token must be bytes")
        if len(data) > MAX_TOKEN_SIZE:
            raise ValueError(f"access token is too large ({len(data)} bytes > {MAX_TOKEN_SIZE})")
        outer = _unpack(bytes(data), "access token")
        if not (isinstance(outer, list) and len(outer) == 2 and all(isinstance(x, bytes) for x in outer)):
            raise ValueError("access token is malformed: expected [payload, signature]")
        payload, signature = outer
        if len(signature) != _SIGNATURE_SIZE:
            raise ValueError("access token is malformed: the signature has the wrong size")
        fields = _unpack(payload, "access token payload")
        if not isinstance(fields, list) or not fields:
            raise ValueError("access token payload is malformed: expected an array")
        if fields[0] != TOKEN_VERSION or isinstance(fields[0], bool):
            raise ValueError(
                f"unsupported access token version {fields[0]!r} (this peer reads v{TOKEN_VERSION})"
            )
        if len(fields) != 6:
            raise ValueError("access token payload is malformed: wrong number of fields")
        _, username, peer_id_bytes, run, issued_at, expires_at = fields
        if not isinstance(peer_id_bytes, bytes):
            raise ValueError("access token payload is malformed: peer_id is not bytes")
        try:
            token = cls(username, PeerID(peer_id_bytes), run, issued_at, expires_at, signature)
        except (TypeError, ValueError) as e:
            raise ValueError(f"access token payload is malformed: {e}") from None
        if token.payload_bytes() != payload:
            raise ValueError("access token payload is not in canonical form")
        return token

    @classmethod
    def from_text(cls, text: str) -> AccessToken:
        if not isinstance(text, str):
            raise ValueError("an access token's text form must be a string")
        text = text.strip()
        if len(text) > MAX_TOKEN_SIZE * 2:
            raise ValueError("access token is too large")
        try:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("access token is not valid base64url") from None
        return cls.from_bytes(data)

    def verify(self, authority_public_key: Ed25519PublicKey) -> bool:
        """True when the signature is the authority's signature of this token's payload."""
        return verify_signature(authority_public_key, self.signature, self.payload_bytes())


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_TOKEN_SIZE,
            max_str_len=MAX_TOKEN_SIZE,
            max_array_len=16,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many unrelated types on hostile input
        raise ValueError(f"{what} is not valid msgpack: {type(e).__name__}") from None


def parse_peer_public_key(text: str) -> PeerID:
    """The PeerID named by `text`: a base58 PeerID (``12D3KooW...``) or the standard base64 of a
    libp2p-serialized Ed25519 public key (the 36-byte `PublicKey` protobuf). ValueError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("peer_public_key must be a non-empty string")
    text = text.strip()
    if len(text) > 256:
        raise ValueError("peer_public_key is too long")
    try:
        peer_id = PeerID.from_base58(text)
        peer_id.public_key()  # only Ed25519 identity PeerIDs can be checked in the handshake
        return peer_id
    except ValueError:
        pass
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        return PeerID.from_public_key(deserialize_public_key(raw))
    except (binascii.Error, ValueError):
        pass
    raise ValueError("peer_public_key must be a base58 PeerID or the base64 of a libp2p Ed25519 public key")


class AccessTokenAuthority:
    """A run's token authority: signs `AccessToken`s with its Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._private_key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()

    @classmethod
    def generate(cls) -> AccessTokenAuthority:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AccessTokenAuthority:
        """Load the raw 32-byte Ed25519 seed."""
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise ValueError("an authority private key is 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def public_key_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_key_text(self) -> str:
        """The raw public key in standard base64, as the manifest and the token endpoint carry it."""
        return base64.b64encode(self.public_key_bytes()).decode("ascii")

    def issue(
        self,
        username: str,
        peer: PeerID | Ed25519PublicKey,
        run: str,
        lifetime: float = DEFAULT_TOKEN_LIFETIME,
        *,
        now: float | None = None,
    ) -> AccessToken:
        """Sign a token for `peer` (a PeerID or its public key), valid for `lifetime` seconds."""
        if isinstance(peer, Ed25519PublicKey):
            peer = PeerID.from_public_key(peer)
        if not isinstance(peer, PeerID):
            raise TypeError("peer must be a PeerID or an Ed25519PublicKey")
        if not lifetime > 0:
            raise ValueError("lifetime must be positive")
        issued_at = int(time.time() if now is None else now)
        unsigned = AccessToken(username, peer, run, issued_at, issued_at + max(1, int(lifetime)))
        return dataclasses.replace(unsigned, signature=self._private_key.sign(unsigned.payload_bytes()))


def load_authority_public_key(text_or_bytes: str | bytes) -> Ed25519PublicKey:
    """An authority public key from its raw 32 bytes or their standard base64 (the manifest form)."""
    raw = text_or_bytes
    if isinstance(raw, str):
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("authority public key is not valid base64") from None
    if not isinstance(raw, bytes) or len(raw) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError("an authority public key is 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class TokenAuthorizer(Authorizer):
    """Admits remotes that show a valid token for `run`, signed by the run's authority.

    `token_provider` is an async callable returning our current token bytes (the join flow refreshes
    it before it expires). `clock_skew` seconds of disagreement between clocks are tolerated.
    """

    def __init__(
        self,
        authority_public_key: Ed25519PublicKey | bytes | str,
        run: str,
        token_provider: TokenProvider,
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
    ):
        if not isinstance(authority_public_key, Ed25519PublicKey):
            authority_public_key = load_authority_public_key(authority_public_key)
        if not isinstance(run, str) or not run:
            raise ValueError("run must be a non-empty string")
        if not callable(token_provider):
            raise TypeError("token_provider must be an async callable returning token bytes")
        if clock_skew < 0:
            raise ValueError("clock_skew must be non-negative")
        self.authority_public_key = authority_public_key
        self.run = run
        self._token_provider = token_provider
        self._clock_skew = clock_skew
        self._clock = clock

    async def get_token(self) -> bytes | None:
        return await self._token_provider()

    async def check(self, remote_peer_id: PeerID, token: bytes | None) -> None:
        self.validate(remote_peer_id, token)

    def validate(self, remote_peer_id: PeerID, token: bytes | None) -> AccessToken:
        """The decoded token when it admits `remote_peer_id`; AuthorizationError saying why not."""
        if not token:
            raise AuthorizationError(f"peer {remote_peer_id} presented no access token for run {self.run!r}")
        try:
            decoded = AccessToken.from_bytes(token)
        except ValueError as e:
            raise AuthorizationError(
                f"peer {remote_peer_id} presented a malformed access token: {e}"
            ) from None
        if not decoded.verify(self.authority_public_key):
            raise AuthorizationError(
                f"peer {remote_peer_id}'s access token is not signed by run {self.run!r}'s authority"
            )
        if decoded.run != self.run:
            raise AuthorizationError(
                f"peer {remote_peer_id}'s access token is for run {decoded.run!r}, not {self.run!r}"
            )
        if decoded.peer_id != remote_peer_id:
            raise AuthorizationError(
                f"peer {remote_peer_id} presented an access token issued to another peer ({decoded.peer_id})"
            )
        now = self._clock()
        if now > decoded.expires_at + self._clock_skew:
            raise AuthorizationError(
                f"peer {remote_peer_id}'s access token (user {decoded.username!r}) expired "
                f"{int(now - decoded.expires_at)} s ago"
            )
        if now < decoded.issued_at - self._clock_skew:
            raise AuthorizationError(f"peer {remote_peer_id}'s access token is not valid yet (clock skew?)")
        return decoded


__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "TOKEN_VERSION",
    "AccessToken",
    "AccessTokenAuthority",
    "TokenAuthorizer",
    "load_authority_public_key",
    "parse_peer_public_key",
]
