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
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.errors import ProtocolViolationError
from peer.net.noise import TAGLEN, nonce_bytes

LENGTH = struct.Struct(">I")
LENGTH_SIZE = LENGTH.size
STREAMING_SEAL_SIZE = 64 * 1024  # records at least this large are encrypted straight from their pieces


class RecordSealer:
    """Encrypts outgoing records with a send key and a counting nonce."""

    __slots__ = ("_aead", "_aes", "_counter", "_spare")

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._aes = algorithms.AES(key)
        self._counter = 0
        self._spare: bytearray | None = None

    def seal(self, pieces: list[bytes | memoryview], size: int) -> bytearray | memoryview:
        """One whole record (length prefix + ciphertext + tag) from plaintext `pieces` of `size` bytes.

        A small record is assembled, then encrypted in place (AES-GCM in OpenSSL supports in == out).
        A large one is encrypted piece by piece straight from the caller's buffers into the record,
        so its payload is read once instead of copied and read again. Both give the same bytes
        (tests/net/test_record.py pins them against one-shot AES-GCM).
        """
        if sum(len(piece) for piece in pieces) != size:
            raise ValueError(f"size: the pieces do not hold {size} bytes")
        record = self._buffer(LENGTH_SIZE + size + TAGLEN)
        view = memoryview(record)
        LENGTH.pack_into(view, 0, size + TAGLEN)
        length_prefix = bytes(view[:LENGTH_SIZE])
        nonce = nonce_bytes(self._counter)
        if size < STREAMING_SEAL_SIZE:
            offset = LENGTH_SIZE
            for piece in pieces:
                end = offset + len(piece)
                view[offset:end] = piece
                offset = end
            self._aead.encrypt_into(nonce, view[LENGTH_SIZE:offset], length_prefix, view[LENGTH_SIZE:])
        else:
            encryptor = Cipher(self._aes, modes.GCM(nonce)).encryptor()
            encryptor.authenticate_additional_data(length_prefix)
            offset = LENGTH_SIZE
            for piece in pieces:
                offset += encryptor.update_into(piece, view[offset:])
            if offset != LENGTH_SIZE + size:  # GCM is a stream mode: every byte comes out at once
                raise RuntimeError(f"AES-GCM returned {offset - LENGTH_SIZE} of {size} bytes")
            encryptor.finalize()
            view[offset : offset + TAGLEN] = encryptor.tag
        self._counter += 1
        return record

    def _buffer(self, total: int) -> bytearray | memoryview:
        """Memory for a record of `total` bytes: the recycled spare when a large record fits in it."""
        spare = self._spare
        if spare is None or total < STREAMING_SEAL_SIZE or len(spare) < total:
            return bytearray(total)
        self._spare = None
        return memoryview(spare)[:total] if len(spare) > total else spare

    def recycle(self, record: bytearray | memoryview) -> None:
        """Reuse the memory of a large record that the socket has fully taken (nothing else holds it)."""
        buffer = record.obj if isinstance(record, memoryview) else record
        if isinstance(buffer, bytearray) and len(buffer) >= STREAMING_SEAL_SIZE:
            self._spare = buffer


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
