"""Seeding a run: an organizer's uploaded checkpoint, checked without trusting it, becomes the seed.

The upload streams to a hidden file in the run's checkpoint directory under the upload size limit.
It is then read the way a peer reads it (`peer.runs.seed`): it must be a torch zip file whose
records do not expand past the upload limit, it is loaded with `torch.load(weights_only=True)`
(which builds tensors and plain containers, never arbitrary objects), and it must be a flat
`{name: tensor}` dict whose names, shapes and dtypes are exactly those of the run's recipe model
(built on the meta device, so no memory is spent on weights), with finite values. Anything else is
refused with a 422 that says what is wrong. An accepted upload is stored as a checkpoint with source
"upload"; the manifest then names it as the run's `initial_state`.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import torch

from backend.checkpoints.store import Checkpoint, CheckpointStore, RecipeInfo
from backend.errors import InvalidInput, PayloadTooLarge
from peer.runs import RecipeConfigError, RecipeNotFoundError, get_recipe
from peer.runs.seed import SeedError, check_state_dict, read_state_dict

logger = logging.getLogger(__name__)


async def store_seed_upload(
    store: CheckpointStore,
    *,
    run: str,
    recipe: RecipeInfo,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
) -> Checkpoint:
    """Write `chunks` to disk (at most `max_bytes`), check them against `recipe`'s model, and store
    them as `run`'s seed; PayloadTooLarge or InvalidInput otherwise, leaving no file behind."""
    temporary = anyio.Path(store.temporary_path(run))
    size = 0
    try:
        async with await anyio.open_file(temporary, "xb") as file:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"The checkpoint is larger than the {max_bytes}-byte limit.")
                await file.write(chunk)
        if size == 0:
            raise InvalidInput("The checkpoint is empty.", {"body": "The request body is empty."})
        return await anyio.to_thread.run_sync(
            _check_and_store, store, run, recipe, Path(temporary), max_bytes
        )
    finally:
        with anyio.CancelScope(shield=True):
            await temporary.unlink(missing_ok=True)


def _check_and_store(
    store: CheckpointStore, run: str, recipe: RecipeInfo, path: Path, max_bytes: int
) -> Checkpoint:
    expected = expected_state(recipe)
    try:
        _check_expanded_size(path, max_bytes)
        state = check_state_dict(expected, read_state_dict(path), source="the uploaded checkpoint")
    except SeedError as e:
        message = str(e)[:1].upper() + str(e)[1:]
        raise InvalidInput(message, {"body": message}) from None
    checkpoint = store.save(run, state, epoch=0, recipe=recipe, source="upload")
    logger.info("Run %r is seeded from the uploaded checkpoint %s", run, checkpoint.id)
    return checkpoint


def _check_expanded_size(path: Path, max_bytes: int) -> None:
    """torch.save stores its records uncompressed; a zip whose records would expand past the upload
    limit is refused before torch reads it (no zip bombs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SeedError(
            f"the uploaded checkpoint is not a torch checkpoint (torch.save's zip format): {e}"
        ) from None
    if expanded > max_bytes:
        raise SeedError(
            f"the uploaded checkpoint expands to {expanded} bytes, over the {max_bytes}-byte limit"
        )


def expected_state(recipe: RecipeInfo) -> dict[str, torch.Tensor]:
    """The state_dict of `recipe`'s model, with tensors on the meta device (shapes and dtypes only)."""
    try:
        built = get_recipe(recipe.name, recipe.config)
    except (RecipeNotFoundError, RecipeConfigError) as e:
        message = f"The site cannot check the checkpoint against the run's model: {e}"
        raise InvalidInput(message, {"body": message}) from None
    try:
        with torch.device("meta"):
            model = built.build_model()
    except (RuntimeError, NotImplementedError):  # a recipe whose construction needs real tensors
        model = built.build_model()
    return model.state_dict()
