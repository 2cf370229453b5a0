"""GET /api/v1/runs/{slug}/experts: the Mixture-of-Experts grid of the run, and which experts live."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from backend.api.deps import SessionDep
from backend.schemas import ErrorResponse, ExpertsPublic
from backend.services import runs as runs_service
from backend.services import swarm as swarm_service

router = APIRouter(prefix="/runs", tags=["swarm"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404,)}


@router.get("/{slug}/experts", response_model=ExpertsPublic, responses=_ERRORS)
def get_experts(slug: str, session: SessionDep) -> Response:
    """Every uid of the run's expert grid with whether a server declares it now; empty for a dense run."""
    view = swarm_service.experts_view(session, run=runs_service.get_run(session, slug=slug))
    return Response(view.model_dump_json(), media_type="application/json")
