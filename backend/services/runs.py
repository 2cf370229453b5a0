"""Runs: creation (with a fresh authority key), edits, status changes, listing and lookup."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from backend.errors import Conflict, NotFound, PermissionDenied
from backend.models import Run, RunAuthorityKey, RunDataset, RunStatus, User
from backend.schemas import DatasetURL, RunCreate, RunSettings
from backend.security import SecretBox
from backend.services.datasets import replace_dataset
from peer.net.tokens import AccessTokenAuthority

logger = logging.getLogger(__name__)


def _apply_settings(run: Run, data: RunSettings) -> None:
    run.name = data.name
    run.description = data.description
    run.recipe_name = data.recipe.name
    run.recipe_config = data.recipe.config
    run.target_batch_size = data.target_batch_size
    run.optimizer = data.optimizer
    run.averaging = data.averaging
    run.compression = data.compression
    run.auth_mode = data.auth_mode.value
    run.allowlist = data.allowlist
    run.initial_peers = data.initial_peers


def create_run(session: Session, *, owner: User, data: RunCreate, secret_key: str) -> Run:
    if not owner.can_organize:
        raise PermissionDenied("Only organizers can create runs.")
    if session.scalar(select(Run.id).where(Run.slug == data.slug)) is not None:
        raise Conflict(f"The slug {data.slug!r} is taken.", field="slug")
    run = Run(slug=data.slug, owner=owner)
    _apply_settings(run, data)
    authority = AccessTokenAuthority.generate()
    run.authority_key = RunAuthorityKey(
        public_key=authority.public_key_bytes(),
        encrypted_private_key=SecretBox(secret_key).encrypt(authority.private_bytes()),
    )
    if data.dataset is not None:
        set_dataset_url(session, run=run, dataset=data.dataset)
    session.add(run)
    session.flush()
    logger.info("User %r created run %r", owner.username, run.slug)
    return run


def update_run(session: Session, *, run: Run, data: RunSettings) -> Run:
    _apply_settings(run, data)
    session.flush()
    logger.info("Run %r was edited", run.slug)
    return run


def set_run_status(session: Session, *, run: Run, status: RunStatus) -> Run:
    if run.status == RunStatus.archived.value and status != RunStatus.archived:
        raise Conflict("An archived run cannot be reopened.")
    run.status = status.value
    session.flush()
    logger.info("Run %r is now %s", run.slug, status.value)
    return run


def set_dataset_url(
    session: Session, *, run: Run, dataset: DatasetURL, upload_dir: Path | None = None
) -> RunDataset:
    """Point the run's dataset at a URL. An uploaded file it replaces is deleted from `upload_dir` once
    the session commits (see backend.services.datasets)."""
    row = RunDataset(kind="url", url=dataset.url, sha256=dataset.sha256, format=dataset.format)
    replace_dataset(session, run=run, dataset=row, upload_dir=upload_dir)
    return row


def get_run(session: Session, *, slug: str) -> Run:
    """The run named `slug`, with its owner, dataset and authority key (what every view of a run shows)
    loaded by the same query."""
    run = session.scalar(
        select(Run)
        .where(Run.slug == slug)
        .options(joinedload(Run.owner), joinedload(Run.dataset), joinedload(Run.authority_key))
    )
    if run is None:
        raise NotFound(f"No run named {slug!r}.")
    return run


def list_runs(
    session: Session, *, limit: int, offset: int, include_archived: bool = False, owner: User | None = None
) -> tuple[list[Run], int]:
    query = select(Run)
    if not include_archived:
        query = query.where(Run.status != RunStatus.archived.value)
    if owner is not None:
        query = query.where(Run.owner_id == owner.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    runs = session.scalars(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit).offset(offset))
    return list(runs), total


def check_can_manage(run: Run, user: User) -> None:
    if run.owner_id != user.id and user.role != "admin":
        raise PermissionDenied("Only the run's organizer can change it.")


def run_authority(run: Run, *, secret_key: str) -> AccessTokenAuthority:
    if run.authority_key is None:
        raise NotFound(f"Run {run.slug!r} has no token authority.")
    raw = SecretBox(secret_key).decrypt(run.authority_key.encrypted_private_key)
    return AccessTokenAuthority.from_private_bytes(raw)
