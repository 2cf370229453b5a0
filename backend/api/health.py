"""GET /api/v1/health: the site is up and its database answers."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from backend.api.deps import SessionDep
from backend.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(session: SessionDep) -> Health:
    from backend import __version__

    session.execute(text("SELECT 1"))
    return Health(status="ok", version=__version__, database="ok")
