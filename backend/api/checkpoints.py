"""Checkpoints over REST: list, download, sidecar, and the organizer's seed upload.

Like the run's dataset, checkpoints are public to whoever can read the run; uploading or removing the
seed needs the API key of the run's organizer (or an admin's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import FileResponse, Response

from backend.api.deps import ManagedRun, RunDep, SettingsDep
from backend.checkpoints.seeds import store_seed_upload
from backend.checkpoints.store import Checkpoint, CheckpointStore, RecipeInfo, Source
from backend.errors import NotFound
from backend.schemas import ErrorResponse

router = APIRouter(prefix="/runs", tags=["checkpoints"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422)
}


def get_checkpoint_store(request: Request) -> CheckpointStore:
    """The app's checkpoint store (`app.state.checkpoint_store`, set up by `create_app`)."""
    return request.app.state.checkpoint_store


CheckpointStoreDep = Annotated[CheckpointStore, Depends(get_checkpoint_store)]


class CheckpointPublic(pydantic.BaseModel):
    id: str
    run: str
    epoch: int
    created_at: datetime
    size: int
    sha256: str
    source: Source
    recipe: RecipeInfo
    url: str  # the .pt file
    meta_url: str  # the JSON sidecar


class CheckpointList(pydantic.BaseModel):
    items: list[CheckpointPublic]  # newest first
    initial_state: CheckpointPublic | None  # the seed that fresh peers load, if the run has one


def checkpoint_public(checkpoint: Checkpoint, public_url: str) -> CheckpointPublic:
    url = f"{public_url}/api/v1/runs/{checkpoint.run}/checkpoints/{checkpoint.id}"
    return CheckpointPublic(
        **checkpoint.model_dump(include={"id", "run", "epoch", "created_at", "size", "sha256", "source"}),
        recipe=checkpoint.recipe,
        url=url,
        meta_url=f"{url}/meta",
    )


@router.get("/{slug}/checkpoints", response_model=CheckpointList, responses=_ERRORS)
def list_checkpoints(run: RunDep, settings: SettingsDep, store: CheckpointStoreDep) -> CheckpointList:
    """The run's checkpoints, newest first: the swarm's saved states and the organizer's seed."""
    items = [checkpoint_public(c, settings.public_url) for c in store.list(run.slug)]
    seed = next((item for item in items if item.source == "upload"), None)
    return CheckpointList(items=items, initial_state=seed)


@router.get(
    "/{slug}/checkpoints/{checkpoint_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
)
def download_checkpoint(run: RunDep, checkpoint_id: str, store: CheckpointStoreDep) -> FileResponse:
    """The checkpoint's `.pt`: a `model.state_dict()`; read it with `torch.load(path, weights_only=True)`."""
    checkpoint = store.get(run.slug, checkpoint_id)
    return FileResponse(
        store.path(checkpoint), filename=checkpoint.filename, media_type="application/octet-stream"
    )


@router.get("/{slug}/checkpoints/{checkpoint_id}/meta", response_model=Checkpoint, responses=_ERRORS)
def checkpoint_meta(run: RunDep, checkpoint_id: str, store: CheckpointStoreDep) -> Checkpoint:
    """The checkpoint's JSON sidecar: epoch, recipe and config, sha256 and size of the `.pt`, source."""
    return store.get(run.slug, checkpoint_id)


@router.put("/{slug}/initial-checkpoint", response_model=CheckpointPublic, responses=_ERRORS)
async def upload_initial_checkpoint(
    request: Request, run: ManagedRun, settings: SettingsDep, store: CheckpointStoreDep
) -> CheckpointPublic:
    """Seed the run with the raw request body, a `torch.save(model.state_dict())` file of the run's
    recipe model (at most `max_upload_bytes`); 422 with the reason when it does not fit the model."""
    checkpoint = await store_seed_upload(
        store,
        run=run.slug,
        recipe=RecipeInfo(name=run.recipe_name, config=run.recipe_config),
        chunks=request.stream(),
        max_bytes=settings.max_upload_bytes,
    )
    return checkpoint_public(checkpoint, settings.public_url)


@router.delete("/{slug}/initial-checkpoint", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def remove_initial_checkpoint(run: ManagedRun, store: CheckpointStoreDep) -> Response:
    """Stop seeding the run: fresh peers start from the recipe's initialization again."""
    seeds = [c for c in store.list(run.slug) if c.source == "upload"]
    if not seeds:
        raise NotFound(f"Run {run.slug!r} has no initial checkpoint.")
    for checkpoint in seeds:
        store.remove(checkpoint)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
