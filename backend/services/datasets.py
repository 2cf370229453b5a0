"""Dataset uploads: streamed to disk under a size limit while their sha256 is computed."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from sqlalchemy.orm import Session

from backend.errors import InvalidInput, PayloadTooLarge
from backend.models import Run, RunDataset

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None) -> str:
    name = _SAFE_NAME.sub("_", os.path.basename(name or "")).strip("._") or "dataset"
    return name[:200]


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
    """Write `chunks` to `upload_dir`, refusing (and deleting) anything over `max_bytes`."""
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
    except BaseException:
        with anyio.CancelScope(shield=True):
            await path.unlink(missing_ok=True)
        raise
    old = run.dataset
    if old is not None and old.storage_name:
        await (directory / old.storage_name).unlink(missing_ok=True)
    run.dataset = RunDataset(
        kind="upload",
        filename=safe_filename(filename),
        storage_name=storage_name,
        size_bytes=size,
        sha256=digest.hexdigest(),
        format=data_format,
    )
    session.flush()
    logger.info("Stored a %d-byte dataset for run %r (sha256 %s)", size, run.slug, digest.hexdigest())
    return run.dataset
