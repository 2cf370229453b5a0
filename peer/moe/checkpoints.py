"""Expert checkpoints: one file per expert, written atomically, restored when a server starts.

    <checkpoint_dir>/<uid>/checkpoint.pt     the latest state (module, optimizer, scheduler, counters)

A save writes `checkpoint.pt.tmp` and renames it over `checkpoint.pt`, so a crash mid-save leaves
the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`: a checkpoint file holds
tensors and plain values only, never code. These functions block; the server calls them in a worker
thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from peer.moe.expert_backend import ExpertBackend

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(checkpoint_dir: str | os.PathLike[str], uid: str) -> Path:
    return Path(checkpoint_dir) / uid / CHECKPOINT_NAME


def save_checkpoints(backends: Mapping[str, ExpertBackend], checkpoint_dir: str | os.PathLike[str]) -> None:
    """Write every expert's state under `checkpoint_dir`."""
    for uid, backend in backends.items():
        path = checkpoint_path(checkpoint_dir, uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(CHECKPOINT_NAME + ".tmp")
        torch.save(backend.state_dict(), tmp)
        os.replace(tmp, path)
    logger.debug("saved %d expert checkpoints to %s", len(backends), checkpoint_dir)


def load_checkpoints(
    backends: Mapping[str, ExpertBackend], checkpoint_dir: str | os.PathLike[str]
) -> list[str]:
    """Restore each expert that has a checkpoint; returns the uids restored."""
    restored = []
    for uid, backend in backends.items():
        path = checkpoint_path(checkpoint_dir, uid)
        if not path.exists():
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        backend.load_state_dict(state)
        restored.append(uid)
    if restored:
        logger.info("restored %d experts from %s", len(restored), checkpoint_dir)
    return restored


__all__ = ["CHECKPOINT_NAME", "checkpoint_path", "load_checkpoints", "save_checkpoints"]
