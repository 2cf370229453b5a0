"""Collaborative training.

peer.optim.config     OptimizerConfig, AveragingOptions, LocalUpdates (DiLoCo)
peer.optim.progress   ProgressTracker: signed <run>_progress / <run>_peers records, the global view
"""

from peer.optim.config import AveragingOptions, LocalUpdates, OptimizerConfig
from peer.optim.optimizer import Optimizer
from peer.optim.progress import (
    GlobalProgress,
    PeerRecord,
    ProgressRecord,
    ProgressTracker,
    aggregate,
    parse_progress,
    run_validators,
)

__all__ = [
    "AveragingOptions",
    "GlobalProgress",
    "LocalUpdates",
    "Optimizer",
    "OptimizerConfig",
    "PeerRecord",
    "ProgressRecord",
    "ProgressTracker",
    "aggregate",
    "parse_progress",
    "run_validators",
]
