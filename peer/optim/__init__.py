"""Collaborative training.

peer.optim.config      OptimizerConfig, AveragingOptions, LocalUpdates (DiLoCo)
peer.optim.optimizer   Optimizer: epochs of target_batch_size, gradient or DiLoCo averaging, catch-up
peer.optim.progress    ProgressTracker: signed <run>_progress / <run>_peers records, the global view
peer.optim.master      MasterParams: the inner optimizer's own copy (offloaded to CPU, or a shadow)
peer.optim.background  BackgroundStep: the single-slot worker behind delayed optimizer steps
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
