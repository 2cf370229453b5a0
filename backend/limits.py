"""An ASGI middleware that caps request bodies while they stream in, so no handler ever reads an
unbounded body: dataset and seed checkpoint uploads get `max_upload_bytes` (plus room for form
fields), the rest `max_form_bytes`. Over the cap the request fails with 413 before the excess is read."""

from __future__ import annotations

import re

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_UPLOAD_PATHS = re.compile(
    r"^/(api/v1/runs/[^/]+/dataset|api/v1/runs/[^/]+/initial-checkpoint|runs/new|runs/[^/]+/edit)$"
)
_FORM_OVERHEAD = 256 * 1024


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_form_bytes: int):
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_form_bytes = max_form_bytes

    def limit_for(self, path: str) -> int:
        if _UPLOAD_PATHS.match(path):
            return self.max_upload_bytes + _FORM_OVERHEAD
        return self.max_form_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(scope, send, limit)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"The request body is larger than the {limit}-byte limit.")
            return message

        await self.app(scope, limited_receive, send)


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    body = (
        b'{"error":{"code":"payload_too_large","message":"The request body is larger than the '
        + str(limit).encode()
        + b'-byte limit.","fields":{}}}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
