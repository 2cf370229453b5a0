"""Checkpoint files on disk, no database table: the JSON sidecars are the index.

    <directory>/<run slug>/<id>.pt     a model.state_dict() saved with torch.save
    <directory>/<run slug>/<id>.json   {id, run, epoch, recipe {name, config}, sha256 (of the .pt),
                                        size, created_at, source: "swarm" | "upload"}

Writes are atomic: both files are written (and fsynced) under hidden temporary names, then renamed,
the `.pt` first and the sidecar last, so a listed checkpoint always has its whole file. After each
save the run is pruned: at most `keep` swarm checkpoints (the oldest go first) and only the newest
upload (the run's seed) stay; leftovers of a crash (temporary files, a `.pt` whose sidecar never
arrived) are removed once they are an hour old. A sidecar that cannot be read is skipped (and
logged), never deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import pydantic
import torch

from backend.errors import NotFound

if TYPE_CHECKING:
    from backend.settings import Settings

logger = logging.getLogger(__name__)

CHECKPOINT_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
_RUN_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_STALE_S = 3600.0  # a temporary or orphaned file this old belongs to no save in progress
_CHUNK = 1 << 20

Source = Literal["swarm", "upload"]


class RecipeInfo(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    name: str
    config: dict[str, Any] = pydantic.Field(default_factory=dict)


class Checkpoint(pydantic.BaseModel):
    """One stored checkpoint: the content of its JSON sidecar."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")
    id: str = pydantic.Field(pattern=CHECKPOINT_ID.pattern)
    run: str = pydantic.Field(pattern=_RUN_SLUG.pattern)
    epoch: int = pydantic.Field(ge=0)
    recipe: RecipeInfo
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    size: int = pydantic.Field(ge=0)
    created_at: datetime
    source: Source

    @property
    def filename(self) -> str:
        """A good name for the downloaded file."""
        return f"{self.run}-epoch{self.epoch}-{self.id}.pt"


class CheckpointStore:
    """The checkpoints of every run under `directory` (see the module docstring). Thread-safe."""

    def __init__(self, directory: Path, *, keep: int = 5):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected a positive number of checkpoints, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointStore:
        return cls(settings.checkpoint_dir, keep=settings.checkpoint_keep)

    def run_dir(self, run: str) -> Path:
        if not isinstance(run, str) or not _RUN_SLUG.match(run):
            raise ValueError(f"run: not a run slug: {run!r}")
        return self.directory / run

    # ---- writing ---------------------------------------------------------------------------------

    def save(
        self,
        run: str,
        state: Mapping[str, torch.Tensor],
        *,
        epoch: int,
        recipe: RecipeInfo,
        source: Source,
    ) -> Checkpoint:
        """Store `state` (a state_dict) as a new checkpoint of `run`, then prune the run."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative integer, got {epoch!r}")
        directory = self.run_dir(run)
        directory.mkdir(parents=True, exist_ok=True)
        created_at = datetime.now(timezone.utc)
        checkpoint_id = f"{created_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
        temp_model = directory / f".{checkpoint_id}.pt.tmp"
        temp_sidecar = directory / f".{checkpoint_id}.json.tmp"
        tensors = {name: tensor.detach().cpu() for name, tensor in state.items()}
        try:
            _write_durably(temp_model, lambda file: torch.save(tensors, file))
            sha256, size = _sha256_and_size(temp_model)
            checkpoint = Checkpoint(
                id=checkpoint_id,
                run=run,
                epoch=epoch,
                recipe=recipe,
                sha256=sha256,
                size=size,
                created_at=created_at,
                source=source,
            )
            sidecar = checkpoint.model_dump_json(indent=2).encode()
            _write_durably(temp_sidecar, lambda file: file.write(sidecar))
            with self._lock:
                os.replace(temp_model, directory / f"{checkpoint_id}.pt")
                os.replace(temp_sidecar, directory / f"{checkpoint_id}.json")  # listed from now on
                self._prune(run)
        finally:
            temp_model.unlink(missing_ok=True)
            temp_sidecar.unlink(missing_ok=True)
        logger.info(
            "Stored checkpoint %s of run %r (%s, epoch %d, %d bytes)", checkpoint_id, run, source, epoch, size
        )
        return checkpoint

    def temporary_path(self, run: str) -> Path:
        """A fresh hidden path in the run's directory, for an upload that is not checked yet."""
        directory = self.run_dir(run)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f".upload-{secrets.token_hex(8)}.tmp"

    def remove(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            self._delete(checkpoint)

    def _delete(self, checkpoint: Checkpoint) -> None:
        directory = self.run_dir(checkpoint.run)
        (directory / f"{checkpoint.id}.json").unlink(missing_ok=True)  # unlisted first
        (directory / f"{checkpoint.id}.pt").unlink(missing_ok=True)

    def _prune(self, run: str) -> None:
        checkpoints = self.list(run)
        swarm = [c for c in checkpoints if c.source == "swarm"]
        uploads = [c for c in checkpoints if c.source == "upload"]
        for checkpoint in swarm[self.keep :] + uploads[1:]:
            logger.info("Pruning checkpoint %s of run %r", checkpoint.id, run)
            self._delete(checkpoint)
        stale = time.time() - _STALE_S
        for path in self.run_dir(run).iterdir():
            orphan = path.suffix == ".pt" and not path.with_suffix(".json").exists()  # its sidecar never came
            leftover = path.name.endswith(".tmp") or orphan
            try:
                if leftover and path.stat().st_mtime < stale:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:  # removed by another save meanwhile
                continue

    # ---- reading ---------------------------------------------------------------------------------

    def list(self, run: str) -> list[Checkpoint]:
        """The run's checkpoints, newest first."""
        directory = self.run_dir(run)
        if not directory.is_dir():
            return []
        found = []
        for sidecar in directory.glob("*.json"):
            checkpoint = self._read_sidecar(sidecar)
            if checkpoint is not None and checkpoint.run == run and self.path(checkpoint).is_file():
                found.append(checkpoint)
        found.sort(key=lambda c: (c.created_at, c.id), reverse=True)
        return found

    def latest(self, run: str, source: Source | None = None) -> Checkpoint | None:
        return next((c for c in self.list(run) if source is None or c.source == source), None)

    def initial_state(self, run: str) -> Checkpoint | None:
        """The run's seed: its newest uploaded checkpoint, if any."""
        return self.latest(run, source="upload")

    def get(self, run: str, checkpoint_id: str) -> Checkpoint:
        """The checkpoint `checkpoint_id` of `run`; NotFound for unknown or malformed ids."""
        if not isinstance(checkpoint_id, str) or not CHECKPOINT_ID.match(checkpoint_id):
            raise NotFound(f"Run {run!r} has no checkpoint {checkpoint_id!r}.")
        checkpoint = self._read_sidecar(self.run_dir(run) / f"{checkpoint_id}.json")
        if checkpoint is None or checkpoint.run != run or not self.path(checkpoint).is_file():
            raise NotFound(f"Run {run!r} has no checkpoint {checkpoint_id!r}.")
        return checkpoint

    def path(self, checkpoint: Checkpoint) -> Path:
        """The checkpoint's `.pt` file."""
        return self.run_dir(checkpoint.run) / f"{checkpoint.id}.pt"

    def _read_sidecar(self, path: Path) -> Checkpoint | None:
        if not CHECKPOINT_ID.match(path.stem):
            return None
        try:
            checkpoint = Checkpoint.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, pydantic.ValidationError) as e:
            logger.warning("Ignoring the unreadable checkpoint sidecar %s: %s", path, e)
            return None
        return checkpoint if checkpoint.id == path.stem else None


def _write_durably(path: Path, write: Callable[[BinaryIO], object]) -> None:
    with path.open("xb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def _sha256_and_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
