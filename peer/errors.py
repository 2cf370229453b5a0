"""The error tree of the `peer` library.

Every error that leaves a public API is one of these. Lower-level errors (socket errors,
`cryptography` exceptions, protobuf decode errors) are translated at the boundary where they occur.

    PeerError
     +-- IdentityError            a key file is missing, unreadable or malformed
     +-- MultiaddrError           (also ValueError) an address that does not parse
     +-- NetworkError             anything on the wire
     |    +-- DialError           no connection could be made to a peer
     |    +-- HandshakeError      the secure handshake failed
     |    |    +-- PeerIDMismatchError   the remote key is not the PeerID we dialed
     |    |    +-- IncompatibleProtocolError  the remote speaks another protocol version
     |    +-- AuthorizationError  an authorizer refused the remote (or the remote refused us)
     |    +-- ConnectionClosedError  the connection closed under an operation
     |    +-- ProtocolViolationError  the remote sent something malformed; the connection is closed
     |    +-- RPCError            a remote call failed; `.code` is an `RPCCode`
     |         +-- RPCDeadlineExceeded   (also TimeoutError)
     |         +-- RPCCancelled
     +-- DHTError                 a DHT operation could not be done
     +-- AveragingError           an averaging round could not be done
"""

from __future__ import annotations

import enum


class PeerError(Exception):
    """The root of every error raised by the `peer` library."""


class IdentityError(PeerError):
    """An identity key file is missing, unreadable, has unsafe permissions or is malformed."""


class MultiaddrError(PeerError, ValueError):
    """A multiaddr string or binary form that does not parse."""


class NetworkError(PeerError):
    """A failure on the wire."""


class DialError(NetworkError):
    """No connection could be made. `.attempts` maps each address tried to why it failed."""

    def __init__(self, message: str, attempts: dict[str, str] | None = None):
        super().__init__(message)
        self.attempts = dict(attempts or {})


class HandshakeError(NetworkError):
    """The secure handshake did not complete."""


class PeerIDMismatchError(HandshakeError):
    """The remote proved a key whose PeerID differs from the one we expected to reach."""


class IncompatibleProtocolError(HandshakeError):
    """The remote peer speaks a protocol version we do not."""


class AuthorizationError(NetworkError):
    """An authorizer refused the connection: ours refused the remote, or the remote refused us."""


class ConnectionClosedError(NetworkError):
    """The connection closed while an operation was using it."""


class ProtocolViolationError(NetworkError):
    """The remote sent a malformed or forbidden frame; the connection was closed."""


class RPCCode(enum.IntEnum):
    """Error codes carried by a failed remote call (the numbers are part of the wire protocol)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    MESSAGE_TOO_LARGE = 15


class RPCError(NetworkError):
    """A remote call failed. `.code` says why, `.message` is the remote's explanation."""

    def __init__(self, code: RPCCode | int, message: str = ""):
        try:
            code = RPCCode(code)
        except ValueError:
            code = RPCCode.UNKNOWN
        self.code: RPCCode = code
        self.message = message
        super().__init__(f"{code.name}: {message}" if message else code.name)

    def __reduce__(self):  # keep the (code, message) signature when copied
        return (type(self), (self.code, self.message))


class RPCDeadlineExceeded(RPCError, TimeoutError):
    """A remote call did not finish before its deadline."""

    def __init__(self, code: RPCCode | int = RPCCode.DEADLINE_EXCEEDED, message: str = ""):
        super().__init__(code, message)


class RPCCancelled(RPCError):
    """A remote call was cancelled."""

    def __init__(self, code: RPCCode | int = RPCCode.CANCELLED, message: str = ""):
        super().__init__(code, message)


def rpc_error_from_code(code: int, message: str) -> RPCError:
    """Build the most specific `RPCError` subclass for a wire error code."""
    if code == RPCCode.DEADLINE_EXCEEDED:
        return RPCDeadlineExceeded(code, message)
    if code == RPCCode.CANCELLED:
        return RPCCancelled(code, message)
    return RPCError(code, message)


class DHTError(PeerError):
    """A DHT operation could not be done."""


class AveragingError(PeerError):
    """An averaging round could not be done."""
