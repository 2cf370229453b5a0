"""Checkpoints: the organizer gets the trained model out, and can seed a run from a checkpoint.

    backend.checkpoints.store     CheckpointStore: `.pt` files with JSON sidecars on disk, atomic, pruned
    backend.checkpoints.saver     CheckpointSaver: downloads the swarm's state as a client-mode peer
    backend.checkpoints.seeds     store_seed_upload: an organizer's upload, checked against the recipe

Settings: HIVEMIND_SITE_CHECKPOINT_DIR, _PERIOD_S and _KEEP (backend.settings). The REST API is
backend.api.checkpoints; the manifest names a run's seed as `initial_state`.
"""

from backend.checkpoints.saver import CheckpointSaver, monitor_hook, run_manifest
from backend.checkpoints.seeds import store_seed_upload
from backend.checkpoints.store import Checkpoint, CheckpointStore, RecipeInfo

__all__ = [
    "Checkpoint",
    "CheckpointSaver",
    "CheckpointStore",
    "RecipeInfo",
    "monitor_hook",
    "run_manifest",
    "store_seed_upload",
]
