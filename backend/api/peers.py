"""GET /api/v1/runs/{slug}/peers: the run's peers as the swarm monitor last saw them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import SessionDep
from backend.schemas import ErrorResponse, Page, SwarmPeerPublic
from backend.services import runs as runs_service
from backend.services import swarm as swarm_service

router = APIRouter(prefix="/runs", tags=["swarm"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 422)}


@router.get("/{slug}/peers", response_model=Page[SwarmPeerPublic], responses=_ERRORS)
def list_peers(
    slug: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    online_only: bool = False,
) -> Response:
    """Online peers first, then the most recently seen. `user` is who gets the peer's credit."""
    run = runs_service.get_run(session, slug=slug)
    items, total = swarm_service.list_peers(
        session, run=run, limit=limit, offset=offset, online_only=online_only
    )
    page = Page[SwarmPeerPublic](items=items, total=total, limit=limit, offset=offset)
    return Response(page.model_dump_json(), media_type="application/json")
