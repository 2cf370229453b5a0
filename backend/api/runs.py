"""Runs over REST: list, create (organizer key), read, manifest, and the dataset upload."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response

from backend.api.checkpoints import CheckpointStoreDep
from backend.api.deps import ManagedRun, Organizer, RunDep, SecretKeyDep, SessionDep, SettingsDep
from backend.presenters import dataset_public, manifest, run_public, run_summary
from backend.schemas import DatasetPublic, ErrorResponse, Page, RunCreate, RunPublic, RunSummary
from backend.services import datasets as datasets_service
from backend.services import runs as runs_service

router = APIRouter(prefix="/runs", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422)
}


@router.get("", response_model=Page[RunSummary])
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    include_archived: bool = False,
) -> Page[RunSummary]:
    runs, total = runs_service.list_runs(
        session, limit=limit, offset=offset, include_archived=include_archived
    )
    items = [run_summary(run, settings.public_url) for run in runs]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", response_model=RunPublic, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
def create_run(
    body: RunCreate, session: SessionDep, user: Organizer, settings: SettingsDep, secret_key: SecretKeyDep
) -> RunPublic:
    run = runs_service.create_run(session, owner=user, data=body, secret_key=secret_key)
    return run_public(run, settings.public_url)


@router.get("/{slug}", response_model=RunPublic, responses=_ERRORS)
def get_run(slug: str, session: SessionDep, settings: SettingsDep) -> Response:
    run = runs_service.get_run(session, slug=slug)
    return Response(run_public(run, settings.public_url).model_dump_json(), media_type="application/json")


@router.get("/{slug}/manifest", responses=_ERRORS)
def get_manifest(run: RunDep, settings: SettingsDep, checkpoints: CheckpointStoreDep) -> dict[str, Any]:
    """The run manifest a peer reads when it joins (see DESIGN.md)."""
    return manifest(run, settings.public_url, initial_state=checkpoints.initial_state(run.slug))


@router.put("/{slug}/dataset", response_model=DatasetPublic, responses=_ERRORS)
async def upload_dataset(
    request: Request,
    run: ManagedRun,
    session: SessionDep,
    settings: SettingsDep,
    filename: Annotated[str, Query(max_length=255)] = "dataset",
    format: Annotated[str, Query(max_length=32)] = "",
) -> DatasetPublic:
    """Replace the run's dataset with the raw request body (at most `max_upload_bytes`)."""
    dataset = await datasets_service.store_upload(
        session,
        run=run,
        chunks=request.stream(),
        filename=filename,
        data_format=format,
        upload_dir=settings.upload_dir,
        max_bytes=settings.max_upload_bytes,
    )
    result = dataset_public(dataset, run, settings.public_url)
    assert result is not None
    return result
