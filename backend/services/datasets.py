"""Run datasets: uploads streamed to disk under a size limit while their sha256 is computed, and the
replacement of a run's dataset (by an upload, a URL or nothing).

A run has at most one dataset row, and its uploaded file follows that row's transaction:

- the file a replacement supersedes is deleted only after the new row is committed, so a failed
  upload, a failed flush or a failed commit never loses the file the site serves;
- a new upload's file is deleted when its transaction ends without a commit (a rollback, or a session
  closed without committing), so no file is left that no row names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from backend.errors import InvalidInput, PayloadTooLarge
from backend.models import Run, RunDataset

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_FILES_KEY = "hivemind_dataset_files"  # the session.info entry holding a session's _DatasetFiles


def safe_filename(name: str | None) -> str:
    name = _SAFE_NAME.sub("_", os.path.basename(name or "")).strip("._") or "dataset"
    return name[:200]


@dataclass
class _DatasetFiles:
    """The files a session's current transaction has written or superseded."""

    written: set[Path] = field(default_factory=set)  # deleted unless the transaction commits
    superseded: set[Path] = field(default_factory=set)  # deleted once the transaction commits


def _dataset_files(session: Session) -> _DatasetFiles:
    files = session.info.get(_FILES_KEY)
    if files is None:
        files = session.info[_FILES_KEY] = _DatasetFiles()
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)
    return files


def _remove(paths: set[Path], why: str) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            logger.warning("Could not delete the %s dataset file %s: %s", why, path, e)
    paths.clear()


def _after_commit(session: Session) -> None:
    files: _DatasetFiles = session.info[_FILES_KEY]
    files.written.clear()  # committed: rows name them now
    _remove(files.superseded, "replaced")


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint; the outer transaction still decides
    files: _DatasetFiles = session.info[_FILES_KEY]
    _remove(files.written, "uncommitted")  # empty after a commit
    files.superseded.clear()  # not committed: the old rows (and so their files) stay


def replace_dataset(
    session: Session, *, run: Run, dataset: RunDataset | None, upload_dir: Path | None
) -> RunDataset | None:
    """Make `dataset` (a new row, or None for no dataset) the run's dataset; the file of the one it
    replaces (in `upload_dir`) is deleted once the session commits. Without `upload_dir` that file is
    left where it is (logged)."""
    current = run.dataset
    if current is not None:
        if current.storage_name and upload_dir is not None:
            _dataset_files(session).superseded.add(Path(upload_dir) / current.storage_name)
        elif current.storage_name:
            logger.warning("Run %r's replaced dataset file %s is not deleted", run.slug, current.storage_name)
        run.dataset = None
        session.flush()  # the old row goes first: the new one takes the same run_id
    run.dataset = dataset
    session.flush()
    return dataset


async def store_upload(
    session: Session,
    *,
    run: Run,
    chunks: AsyncIterator[bytes],
    filename: str | None,
    data_format: str,
    upload_dir: Path,
    max_bytes: int,
) -> RunDataset:
    """Write `chunks` to `upload_dir`, refusing (and deleting) anything over `max_bytes`, and make the
    file the run's dataset (see the module docstring for when the old and new files are deleted)."""
    if len(data_format) > 32:
        raise InvalidInput("The dataset format is too long.", {"dataset_format": "At most 32 characters."})
    directory = anyio.Path(upload_dir)
    await directory.mkdir(parents=True, exist_ok=True)
    storage_name = f"{run.slug}-{secrets.token_hex(8)}.data"
    path = directory / storage_name
    digest, size = hashlib.sha256(), 0
    try:
        async with await anyio.open_file(path, "xb") as file:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"The dataset is larger than the {max_bytes}-byte limit.")
                digest.update(chunk)
                await file.write(chunk)
        if size == 0:
            raise InvalidInput("The dataset file is empty.", {"dataset_file": "The file is empty."})
        dataset = RunDataset(
            kind="upload",
            filename=safe_filename(filename),
            storage_name=storage_name,
            size_bytes=size,
            sha256=digest.hexdigest(),
            format=data_format,
        )
        replace_dataset(session, run=run, dataset=dataset, upload_dir=upload_dir)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await path.unlink(missing_ok=True)
        raise
    _dataset_files(session).written.add(Path(upload_dir) / storage_name)
    logger.info("Stored a %d-byte dataset for run %r (sha256 %s)", size, run.slug, digest.hexdigest())
    return dataset
