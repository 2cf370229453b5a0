"""The FastAPI application: `create_app(settings)` wires the database, the API, the pages,
the static files, the error handlers, and (when `monitor_enabled`) the swarm monitor, which runs
for the application's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from backend.api import api_router
from backend.api.prometheus import router as prometheus_router
from backend.checkpoints import CheckpointSaver, CheckpointStore, monitor_hook
from backend.csrf import CSRFCookie
from backend.db import make_engine, make_session_factory
from backend.errors import SiteError, TooManyAttempts
from backend.limits import BodySizeLimit
from backend.monitor import MonitorConfig, MonitorService, SwarmMonitor
from backend.pages import pages_router
from backend.pages.deps import render_error_page
from backend.paths import web_dir
from backend.settings import Settings

logger = logging.getLogger(__name__)

_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' https: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_DOCS_PATHS = ("/docs", "/redoc")


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The site. The schema must already be at head (`hivemind-site serve` migrates first)."""
    settings = settings or Settings()
    owns_engine = engine is None
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = _start_monitor(app) if settings.monitor_enabled else None
        try:
            yield
        finally:
            if monitor is not None:
                await asyncio.to_thread(monitor.stop)
            if owns_engine:
                engine.dispose()

    from backend import __version__

    app = FastAPI(
        title="hivemind-site",
        version=__version__,
        description="Publish collaborative training runs and issue access tokens to volunteers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.secret_key = settings.resolved_secret_key()
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.checkpoint_store = CheckpointStore.from_settings(settings)

    app.include_router(api_router)
    app.include_router(prometheus_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=web_dir() / "static"), name="static")
    _add_error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        if not request.url.path.startswith(_DOCS_PATHS):  # Swagger UI loads its assets from a CDN
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    app.add_middleware(CSRFCookie, secret_key=app.state.secret_key, secure=settings.secure_cookies)
    app.add_middleware(
        BodySizeLimit, max_upload_bytes=settings.max_upload_bytes, max_form_bytes=settings.max_form_bytes
    )
    return app


def _start_monitor(app: FastAPI) -> MonitorService:
    """The swarm monitor, on the peer event loop, with the app's database (see backend.monitor)."""
    settings: Settings = app.state.settings
    saver = CheckpointSaver(app.state.checkpoint_store, period=settings.checkpoint_period_s)
    monitor = SwarmMonitor(
        MonitorConfig.from_settings(settings),
        app.state.session_factory,
        secret_key=app.state.secret_key,
        hooks=[monitor_hook(saver)],
    )
    service = MonitorService(monitor)
    service.start()
    app.state.monitor = service
    return service


def _error_json(status: int, code: str, message: str, fields=None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SiteError)
    async def site_error(request: Request, exc: SiteError) -> Response:
        headers = {"retry-after": str(exc.retry_after_s)} if isinstance(exc, TooManyAttempts) else None
        if exc.status_code == 401 and _is_api(request):
            headers = {"www-authenticate": "Bearer"}
        if _is_api(request):
            fields = getattr(exc, "fields", None)
            return _error_json(exc.status_code, exc.code, exc.message, fields, headers)
        return render_error_page(request, exc.status_code, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "Request refused."
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        if _is_api(request) or exc.status_code == 413:
            return _error_json(exc.status_code, code, message, headers=exc.headers)
        return render_error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        fields = {}
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            fields[".".join(loc) or "body"] = error.get("msg", "invalid")
        return _error_json(422, "invalid_input", "The request is not valid.", fields)
