"""GET /api/v1/runs/{slug}/metrics?since=T: the run's time series (peers, samples/s, epoch, loss)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import SessionDep
from backend.schemas import ErrorResponse, MetricsPage
from backend.services import runs as runs_service
from backend.services import swarm as swarm_service

router = APIRouter(prefix="/runs", tags=["swarm"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 422)}


@router.get("/{slug}/metrics", response_model=MetricsPage, responses=_ERRORS)
def get_metrics(
    slug: str,
    session: SessionDep,
    since: Annotated[
        float, Query(ge=0, allow_inf_nan=False, description="Unix seconds: only points after this.")
    ] = 0.0,
    limit: Annotated[int, Query(ge=1, le=swarm_service.MAX_POINTS)] = 2000,
) -> Response:
    """Points after `since`, oldest first. Old points are means over 1 minute, 1 hour or 1 day
    (`resolution_s`). When `truncated`, ask again with `since=next_since` for the rest."""
    run = runs_service.get_run(session, slug=slug)
    points, truncated = swarm_service.metrics_since(session, run=run, since=since, limit=limit)
    page = MetricsPage(
        run=run.slug,
        since=since,
        points=points,
        truncated=truncated,
        next_since=points[-1].t if truncated and points else None,
    )
    return Response(page.model_dump_json(), media_type="application/json")
