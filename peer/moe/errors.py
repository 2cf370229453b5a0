"""Errors of the Mixture-of-Experts subsystem, under `peer.errors.PeerError`.

    PeerError
     +-- MoEError                    an expert could not be used
          +-- ExpertInputError       (also ValueError) inputs that do not match the expert's schema;
          |                          raised by the server's validation and by the client's own checks
          +-- ExpertCallError        a remote expert call failed; `.uid`, `.code` (an `RPCCode`)
          |    +-- ExpertTimeoutError   (also TimeoutError) the call passed its deadline
          +-- NotEnoughExpertsError  fewer experts answered than `k_min` asks for

Transport errors (`RPCError`, `DialError`, ...) are translated into these at the client boundary
(`peer.moe.client.calls`).
"""

from __future__ import annotations

from peer.errors import PeerError, RPCCode


class MoEError(PeerError):
    """An expert could not be served or called."""


class ExpertInputError(MoEError, ValueError):
    """Inputs that do not match an expert's schema (shape, dtype, count or batch size)."""


class ExpertCallError(MoEError):
    """A call to a remote expert failed. `.uid` names the expert, `.code` says why."""

    def __init__(self, uid: str, code: RPCCode | int, message: str):
        self.uid = uid
        try:
            self.code = RPCCode(code)
        except ValueError:
            self.code = RPCCode.UNKNOWN
        self.message = message
        super().__init__(f"expert {uid}: {self.code.name}: {message}")

    def __reduce__(self):
        return (type(self), (self.uid, self.code, self.message))


class ExpertTimeoutError(ExpertCallError, TimeoutError):
    """A call to a remote expert did not finish before its deadline."""


class NotEnoughExpertsError(MoEError):
    """Fewer experts answered than the mixture needs (`k_min`)."""


__all__ = ["ExpertCallError", "ExpertInputError", "ExpertTimeoutError", "MoEError", "NotEnoughExpertsError"]
