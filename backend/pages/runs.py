"""Runs in the browser: list, page, create, edit, pause/resume/archive, and dataset download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from backend.api.checkpoints import CheckpointStoreDep, checkpoint_public
from backend.api.deps import SecretKeyDep, SessionDep, SettingsDep
from backend.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from backend.models import Run, RunStatus
from backend.pages.deps import MaybeUser, PageOrganizer, redirect, render, render_form
from backend.pages.run_form import dataset_choice, form_values, parse_run_form, values_from_run
from backend.presenters import run_public
from backend.schemas import DatasetURL, RunCreate
from backend.services import datasets as datasets_service
from backend.services import runs as runs_service
from backend.services import swarm as swarm_service
from backend.settings import Settings

router = APIRouter()
_CHUNK = 256 * 1024


def get_run(session: SessionDep, slug: str) -> Run:
    return runs_service.get_run(session, slug=slug)


def get_managed_run(run: Annotated[Run, Depends(get_run)], user: PageOrganizer) -> Run:
    runs_service.check_can_manage(run, user)
    return run


ManagedRun = Annotated[Run, Depends(get_managed_run)]


@router.get("/")
def home(
    request: Request, session: SessionDep, settings: SettingsDep, user: MaybeUser, page: int = 1
) -> Response:
    page = max(1, page)
    runs, total = runs_service.list_runs(session, limit=20, offset=(page - 1) * 20)
    mine = (
        runs_service.list_runs(session, limit=100, offset=0, include_archived=True, owner=user)[0]
        if (user and user.can_organize)
        else []
    )
    totals = swarm_service.runs_totals(session, [*runs, *mine])
    return render(
        request, "home.html", runs=runs, mine=mine, page=page, more=total > page * 20, totals=totals
    )


@router.get("/runs/new")
def new_run_page(request: Request, user: PageOrganizer) -> Response:
    values = {"auth_mode": "volunteers", "dataset_kind": "none", "target_batch_size": "4096"}
    return render(request, "runs/new.html", values=values, errors={}, run=None)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


async def _apply_dataset(
    session: Session,
    run: Run,
    kind: str,
    upload: UploadFile | None,
    values: dict[str, str],
    settings: Settings,
) -> None:
    data_format = values.get("dataset_format", "").strip()
    if kind == "none":
        datasets_service.replace_dataset(session, run=run, dataset=None, upload_dir=settings.upload_dir)
    elif kind == "url":
        try:
            dataset = DatasetURL(url=values.get("dataset_url", "").strip(), format=data_format)
        except ValidationError as e:
            raise InvalidInput(
                "bad dataset", {"dataset_url": e.errors()[0]["msg"].removeprefix("Value error, ")}
            ) from None
        runs_service.set_dataset_url(session, run=run, dataset=dataset, upload_dir=settings.upload_dir)
    elif kind == "upload" and upload is not None:
        await datasets_service.store_upload(
            session,
            run=run,
            chunks=_chunks(upload),
            filename=upload.filename,
            data_format=data_format,
            upload_dir=settings.upload_dir,
            max_bytes=settings.max_upload_bytes,
        )


@router.post("/runs/new")
async def create_run(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    secret_key: SecretKeyDep,
    user: PageOrganizer,
) -> Response:
    form = await request.form()
    values = form_values(form)
    data, errors = parse_run_form(values, with_slug=True)
    kind, upload, dataset_errors = dataset_choice(form, values)
    errors.update(dataset_errors)
    if data is not None and not errors:
        try:
            assert isinstance(data, RunCreate)
            run = runs_service.create_run(session, owner=user, data=data, secret_key=secret_key)
            await _apply_dataset(session, run, kind, upload, values, settings)
            return redirect(request, f"/runs/{run.slug}")
        except Conflict as e:
            errors[e.field or "form"] = e.message
        except InvalidInput as e:
            errors.update(e.fields)
        except PayloadTooLarge as e:
            errors["dataset_file"] = e.message
        session.rollback()
    return render_form(
        request, "runs/new.html", "runs/_form.html", 422, values=values, errors=errors, run=None
    )


@router.get("/runs/{slug}")
def run_page(
    request: Request,
    run: Annotated[Run, Depends(get_run)],
    settings: SettingsDep,
    user: MaybeUser,
    store: CheckpointStoreDep,
    session: SessionDep,
):
    view = run_public(run, settings.public_url)
    can_manage = user is not None and (user.id == run.owner_id or user.role == "admin")
    checkpoints = [checkpoint_public(c, settings.public_url) for c in store.list(run.slug)]
    half_life_s = settings.leaderboard_half_life_s
    return render(
        request,
        "runs/show.html",
        run=run,
        view=view,
        can_manage=can_manage,
        checkpoints=checkpoints,
        live=swarm_service.run_live_view(session, run=run, half_life_s=half_life_s),
        experts=swarm_service.experts_view(session, run=run),
        half_life_s=half_life_s,
    )


@router.get("/runs/{slug}/edit")
def edit_run_page(request: Request, run: ManagedRun) -> Response:
    return render(request, "runs/edit.html", values=values_from_run(run), errors={}, run=run)


@router.post("/runs/{slug}/edit")
async def edit_run(request: Request, run: ManagedRun, session: SessionDep, settings: SettingsDep) -> Response:
    form = await request.form()
    values = form_values(form)
    data, errors = parse_run_form(values, with_slug=False)
    kind, upload, dataset_errors = dataset_choice(form, values)
    errors.update(dataset_errors)
    if data is not None and not errors:
        try:
            runs_service.update_run(session, run=run, data=data)
            await _apply_dataset(session, run, kind, upload, values, settings)
            return redirect(request, f"/runs/{run.slug}")
        except InvalidInput as e:
            errors.update(e.fields)
        except PayloadTooLarge as e:
            errors["dataset_file"] = e.message
        session.rollback()
    return render_form(
        request, "runs/edit.html", "runs/_form.html", 422, values=values, errors=errors, run=run
    )


@router.post("/runs/{slug}/status/{status}")
def change_status(request: Request, run: ManagedRun, status: str, session: SessionDep) -> Response:
    try:
        new_status = RunStatus(status)
    except ValueError:
        raise NotFound(f"No status {status!r}.") from None
    runs_service.set_run_status(session, run=run, status=new_status)
    return redirect(request, f"/runs/{run.slug}")


@router.get("/runs/{slug}/dataset")
def download_dataset(run: Annotated[Run, Depends(get_run)], settings: SettingsDep) -> Response:
    dataset = run.dataset
    if dataset is None:
        raise NotFound(f"Run {run.slug!r} has no dataset.")
    if dataset.kind == "url":
        return RedirectResponse(dataset.url or "/", status_code=307)
    path = settings.upload_dir / (dataset.storage_name or "")
    if not dataset.storage_name or not path.is_file():
        raise NotFound("The dataset file is missing on the server.")
    return FileResponse(path, filename=dataset.filename or "dataset", media_type="application/octet-stream")
