"""Peer identity: an Ed25519 key pair and the PeerID derived from its public key.

The PeerID follows libp2p: the public key is serialized as the libp2p `PublicKey` protobuf
(`KeyType.Ed25519 = 1`), wrapped in an identity multihash (code 0x00), and printed in base58btc,
so every PeerID starts with ``12D3KooW``.

A key file holds the private key in PKCS#8 PEM, created with mode 0600; a file that others can read
is refused, like ssh refuses such keys.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from peer.errors import IdentityError

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: index for index, char in enumerate(_B58_ALPHABET)}

# libp2p crypto.proto: PublicKey { required KeyType Type = 1; required bytes Data = 2; }, Ed25519 = 1.
_ED25519_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_IDENTITY_MULTIHASH = 0x00
ED25519_PUBLIC_KEY_SIZE = 32


def b58encode(data: bytes) -> str:
    """Encode bytes in base58btc (the Bitcoin alphabet), keeping leading zero bytes as '1'."""
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, remainder = divmod(number, 58)
        chars.append(_B58_ALPHABET[remainder])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Decode base58btc; raises ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"invalid base58 character {char!r}") from None
    leading_ones = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * leading_ones + body


def serialize_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The libp2p `PublicKey` protobuf encoding of an Ed25519 public key (36 bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _ED25519_PROTO_PREFIX + raw


def deserialize_public_key(data: bytes) -> Ed25519PublicKey:
    """Parse a libp2p `PublicKey` protobuf holding an Ed25519 key; ValueError for anything else."""
    if len(data) != len(_ED25519_PROTO_PREFIX) + ED25519_PUBLIC_KEY_SIZE or not data.startswith(
        _ED25519_PROTO_PREFIX
    ):
        raise ValueError("not a libp2p Ed25519 public key (only Ed25519 keys are supported)")
    return Ed25519PublicKey.from_public_bytes(data[len(_ED25519_PROTO_PREFIX) :])


class PeerID:
    """A peer's identity on the network: the identity multihash of its public key.

    Compare, hash and sort PeerIDs directly; `str(peer_id)` is the base58 form.
    """

    __slots__ = ("_bytes", "_hash")

    def __init__(self, multihash: bytes):
        if not isinstance(multihash, (bytes, bytearray, memoryview)):
            raise TypeError(f"multihash must be bytes, not {type(multihash).__name__}")
        multihash = bytes(multihash)
        if len(multihash) < 2 or multihash[1] != len(multihash) - 2:
            raise ValueError("multihash is malformed: its length byte does not match its digest")
        self._bytes = multihash
        self._hash = hash(multihash)

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey) -> PeerID:
        encoded = serialize_public_key(public_key)
        return cls(bytes([_IDENTITY_MULTIHASH, len(encoded)]) + encoded)

    @classmethod
    def from_base58(cls, text: str) -> PeerID:
        try:
            return cls(b58decode(text))
        except ValueError as e:
            raise ValueError(f"{text!r} is not a valid PeerID: {e}") from None

    def to_bytes(self) -> bytes:
        return self._bytes

    def to_base58(self) -> str:
        return b58encode(self._bytes)

    def public_key(self) -> Ed25519PublicKey:
        """The Ed25519 key inlined in this PeerID (ValueError for a hashed, non-Ed25519 PeerID)."""
        if self._bytes[0] != _IDENTITY_MULTIHASH:
            raise ValueError("this PeerID does not inline its public key")
        return deserialize_public_key(self._bytes[2:])

    def short(self) -> str:
        """A short form for humans: the last 8 characters, like `...Xy12abCD`."""
        return "…" + self.to_base58()[-8:]

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerID({self.to_base58()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerID) and self._bytes == other._bytes

    def __lt__(self, other: PeerID) -> bool:
        return self._bytes < other._bytes

    def __hash__(self) -> int:
        return self._hash


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `data`."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


class Identity:
    """An Ed25519 key pair: signs on behalf of this peer and names it with `peer_id`."""

    __slots__ = ("_private_key", "peer_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._private_key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.peer_id = PeerID.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key at `path`, or create one there (mode 0600) if the file does not exist."""
        path = Path(path).expanduser()
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path).expanduser()
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise IdentityError(
                    f"identity file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                    f"run `chmod 600 {path}` and try again"
                )
            data = path.read_bytes()
        except OSError as e:
            raise IdentityError(f"cannot read identity file {path}: {e.strerror or e}") from e
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise IdentityError(f"identity file {path} does not hold a PEM private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"identity file {path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key to a new file readable only by its owner; never overwrites."""
        path = Path(path).expanduser()
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise IdentityError(f"identity file {path} already exists; refusing to overwrite it") from None
        except OSError as e:
            raise IdentityError(f"cannot create identity file {path}: {e.strerror or e}") from e
        with os.fdopen(fd, "wb") as file:
            file.write(pem)

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._private_key

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"
