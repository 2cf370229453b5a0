"""GET /api/v1/runs/{slug}/leaderboard: who contributed what to the run."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend.api.deps import SessionDep, SettingsDep
from backend.schemas import ErrorResponse, LeaderboardRow, Page
from backend.services import runs as runs_service
from backend.services.leaderboard import LeaderboardOrder, leaderboard

router = APIRouter(prefix="/runs", tags=["swarm"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 422)}


@router.get("/{slug}/leaderboard", response_model=Page[LeaderboardRow], responses=_ERRORS)
def get_leaderboard(
    slug: str,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    order: LeaderboardOrder = LeaderboardOrder.samples,
) -> Response:
    """Ranked by credited samples (`order=samples`), the decaying recent score (`recent`) or time
    online (`time_online`). Claims that failed the sanity checks are never credited."""
    rows, total = leaderboard(
        session,
        run=runs_service.get_run(session, slug=slug),
        half_life_s=settings.leaderboard_half_life_s,
        limit=limit,
        offset=offset,
        order=order,
    )
    page = Page[LeaderboardRow](items=rows, total=total, limit=limit, offset=offset)
    return Response(page.model_dump_json(), media_type="application/json")
