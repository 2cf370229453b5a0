"""CSRF protection for the pages: a signed double-submit token.

`CSRFCookie` (ASGI middleware) makes sure every visitor has a `hms_csrf` cookie holding a token
signed with the site secret, and exposes it to templates as `request.state.csrf_token`. Every form
echoes it (a hidden field, or the `X-CSRF-Token` header htmx sends), and `verify_csrf` refuses an
unsafe request whose echo is missing or differs from the cookie.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import PermissionDenied
from backend.security import csrf_token_is_genuine, new_csrf_token

CSRF_COOKIE = "hms_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class CSRFCookie:
    def __init__(self, app: ASGIApp, *, secret_key: str, secure: bool):
        self.app = app
        self.secret_key = secret_key
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/api/", "/static/")):
            await self.app(scope, receive, send)
            return
        token = _cookie(scope, CSRF_COOKIE)
        fresh = not csrf_token_is_genuine(self.secret_key, token)
        if fresh:
            token = new_csrf_token(self.secret_key)
        scope.setdefault("state", {})["csrf_token"] = token
        secure = self.secure or scope.get("scheme") == "https"

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                cookie = f"{CSRF_COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly"
                if secure:
                    cookie += "; Secure"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:
                return None
            if name in jar:
                return jar[name].value
    return None


async def verify_csrf(request: Request) -> AsyncIterator[None]:
    """Refuse an unsafe page request without the CSRF token its cookie holds; afterwards close the
    parsed form (and so its spooled upload files)."""
    try:
        if request.method not in _SAFE_METHODS:
            await _check(request)
        yield
    finally:
        await request.close()


async def _check(request: Request) -> None:
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    secret_key = request.app.state.secret_key
    genuine = cookie is not None and csrf_token_is_genuine(secret_key, cookie)
    if not (genuine and sent and hmac.compare_digest(cookie or "", sent)):
        raise PermissionDenied("The form's CSRF token is missing or stale; reload the page and try again.")
