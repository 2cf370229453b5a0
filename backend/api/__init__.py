"""The REST API under /api/v1 (OpenAPI at /docs).

deps            Annotated dependency aliases: SessionDep, SettingsDep, ApiUser, Organizer, RunDep
health          GET /api/v1/health
runs            list, create, read, manifest, dataset upload
access_tokens   POST /api/v1/runs/{slug}/access-tokens
"""

from fastapi import APIRouter

from backend.api import access_tokens, health, runs

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(health.router)
api_router.include_router(runs.router)
api_router.include_router(access_tokens.router)

__all__ = ["api_router"]
