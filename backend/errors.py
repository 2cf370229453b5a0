"""The site's error tree. Services raise these; the API turns them into JSON errors and the pages
into messages next to the form fields.

    SiteError                    (500)
     +-- AuthenticationRequired  (401) no credentials, or wrong ones
     +-- PermissionDenied        (403) known user, but not allowed to do this
     +-- NotFound                (404)
     +-- Conflict                (409) e.g. a slug that is taken
     +-- PayloadTooLarge         (413) an upload over the limit
     +-- InvalidInput            (422) `.fields` maps each bad field to its message
     +-- TooManyAttempts         (429) login throttling
"""

from __future__ import annotations


class SiteError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AuthenticationRequired(SiteError):
    status_code = 401
    code = "authentication_required"


class PermissionDenied(SiteError):
    status_code = 403
    code = "permission_denied"


class NotFound(SiteError):
    status_code = 404
    code = "not_found"


class Conflict(SiteError):
    status_code = 409
    code = "conflict"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class PayloadTooLarge(SiteError):
    status_code = 413
    code = "payload_too_large"


class InvalidInput(SiteError):
    status_code = 422
    code = "invalid_input"

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.fields = dict(fields or {})


class TooManyAttempts(SiteError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s
