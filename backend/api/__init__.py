"""The REST API under /api/v1 (OpenAPI at /docs).

deps            Annotated dependency aliases: SessionDep, SettingsDep, ApiUser, Organizer, RunDep
health          GET /api/v1/health
runs            list, create, read, manifest, dataset upload
access_tokens   POST /api/v1/runs/{slug}/access-tokens
peers           GET /api/v1/runs/{slug}/peers           (what the swarm monitor stored, below too)
leaderboard     GET /api/v1/runs/{slug}/leaderboard
metrics         GET /api/v1/runs/{slug}/metrics?since=T
experts         GET /api/v1/runs/{slug}/experts
live            WS  /api/v1/runs/{slug}/live
prometheus      GET /metrics (mounted at the root by create_app, not under /api/v1)
checkpoints     the run's checkpoints (list, download, sidecar) and the seed upload
"""

from fastapi import APIRouter

from backend.api import access_tokens, checkpoints, experts, health, leaderboard, live, metrics, peers, runs

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(health.router)
api_router.include_router(runs.router)
api_router.include_router(access_tokens.router)
api_router.include_router(checkpoints.router)
api_router.include_router(peers.router)
api_router.include_router(leaderboard.router)
api_router.include_router(metrics.router)
api_router.include_router(experts.router)
api_router.include_router(live.router)

__all__ = ["api_router"]
