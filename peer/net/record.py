"""The record layer: AES-256-GCM records carrying multiplexer frames after the Noise handshake.

    length: u32 big-endian | ciphertext (length bytes, the last 16 of them the GCM tag)

The nonce is the record's sequence number (32 zero bits + u64 big-endian, as in Noise's AESGCM), kept
implicitly by both sides, and the 4 length bytes are the associated data. A flipped bit, a replayed,
dropped or reordered record therefore fails authentication, and the connection closes.

Records are larger than Noise's 65535-byte transport messages (up to `max_record_size`, 1 MiB by
default, announced in the handshake): per-record costs then vanish next to AES-GCM's own speed.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.errors import ProtocolViolationError
from peer.net.noise import TAGLEN, nonce_bytes

LENGTH = struct.Struct(">I")
LENGTH_SIZE = LENGTH.size


class RecordSealer:
    """Encrypts outgoing records with a send key and a counting nonce."""

    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._counter = 0

    def seal(self, pieces: list[bytes | memoryview], size: int) -> bytearray:
        """One whole record (length prefix + ciphertext + tag) from plaintext `pieces` of `size` bytes.

        The pieces are copied once, into the record, and encrypted there in place (AES-GCM in
        OpenSSL supports in == out; tests/net/test_record.py pins that it matches out-of-place).
        """
        record = bytearray(LENGTH_SIZE + size + TAGLEN)
        LENGTH.pack_into(record, 0, size + TAGLEN)
        view = memoryview(record)
        offset = LENGTH_SIZE
        for piece in pieces:
            end = offset + len(piece)
            view[offset:end] = piece
            offset = end
        self._aead.encrypt_into(
            nonce_bytes(self._counter),
            view[LENGTH_SIZE:offset],
            bytes(view[:LENGTH_SIZE]),
            view[LENGTH_SIZE:],
        )
        self._counter += 1
        return record


class RecordOpener:
    """Decrypts incoming records; any failure is a protocol violation."""

    __slots__ = ("_aead", "_counter", "max_record_size")

    def __init__(self, key: bytes, max_record_size: int):
        self._aead = AESGCM(key)
        self._counter = 0
        self.max_record_size = max_record_size

    def check_length(self, length: int) -> None:
        if length <= TAGLEN or length > self.max_record_size + TAGLEN:
            raise ProtocolViolationError(
                f"record length {length} is outside 17..{self.max_record_size + TAGLEN} bytes"
            )

    def open(self, header: memoryview | bytes, ciphertext: memoryview | bytes) -> bytes:
        try:
            plaintext = self._aead.decrypt(nonce_bytes(self._counter), ciphertext, header)
        except InvalidTag:
            raise ProtocolViolationError(
                "a record failed authentication (tampered, replayed or reordered); closing the connection"
            ) from None
        self._counter += 1
        return plaintext

    def open_in_place(self, header: bytes, record: bytearray) -> memoryview:
        """Decrypt a record read into its own buffer; the plaintext overwrites its start."""
        view = memoryview(record)
        plain = view[: len(record) - TAGLEN]
        try:
            self._aead.decrypt_into(nonce_bytes(self._counter), view, header, plain)
        except InvalidTag:
            raise ProtocolViolationError(
                "a record failed authentication (tampered, replayed or reordered); closing the connection"
            ) from None
        self._counter += 1
        return plain
