"""Options of the collaborative optimizer, grouped in small frozen dataclasses with sane defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from peer.compression import CompressionBase, NoCompression


@dataclass(frozen=True)
class AveragingOptions:
    """How peers meet and average (the Moshpit averager's knobs).

    `gradient_compression` encodes what the gradient (or, in DiLoCo mode, pseudo-gradient) averager
    sends; `state_compression` what the state averager sends: parameters and the optimizer's
    statistics, in state averaging and in state downloads. Peers with different codecs never group.
    """

    target_group_size: int = 4
    min_group_size: int = 2
    min_matchmaking_time: float = 2.0
    request_timeout: float = 3.0
    averaging_timeout: float = 15.0
    gradient_compression: CompressionBase = field(default_factory=NoCompression)
    state_compression: CompressionBase = field(
        default_factory=NoCompression
    )  # fp16 flushes Adam's second moments to 0

    def __post_init__(self) -> None:
        if not 2 <= self.min_group_size <= self.target_group_size:
            raise ValueError("need 2 <= min_group_size <= target_group_size")
        for name in ("min_matchmaking_time", "request_timeout", "averaging_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class LocalUpdates:
    """DiLoCo: `inner_steps` local optimizer steps, then an averaged pseudo-gradient drives an outer
    Nesterov step (`outer_lr`, `outer_momentum`). Communication drops by about `inner_steps` times."""

    inner_steps: int = 50
    outer_lr: float = 0.7
    outer_momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        if self.outer_lr <= 0 or not 0 <= self.outer_momentum < 1:
            raise ValueError("outer_lr must be positive and 0 <= outer_momentum < 1")


@dataclass(frozen=True)
class OptimizerConfig:
    """What the swarm trains towards and how this peer takes part.

    - `target_batch_size`: samples the whole swarm accumulates per epoch (one global step).
    - `state_averaging_period`: average parameters and optimizer statistics every this many epochs.
    - `client_mode`: this peer cannot accept connections; it sends to reducers but reduces nothing.
    - `delay_optimizer_step`: run each epoch's averaging and optimizer step in a background thread,
      overlapping the next batch; the model's parameters are then at most one step stale (see
      `peer.optim.optimizer` for the exact semantics).
    - `offload_optimizer`: the optimizer updates a float32 copy of the parameters in CPU memory and
      keeps its statistics there; the same trajectory, less GPU memory.
    - `local_updates`: DiLoCo mode (see `LocalUpdates`); None for gradient averaging every epoch.
    - `progress_period`: seconds between progress publications.
    """

    target_batch_size: int
    state_averaging_period: int = 5
    client_mode: bool = False
    delay_optimizer_step: bool = False
    offload_optimizer: bool = False
    local_updates: LocalUpdates | None = None
    progress_period: float = 1.0
    averaging: AveragingOptions = field(default_factory=AveragingOptions)

    def __post_init__(self) -> None:
        if self.target_batch_size < 1:
            raise ValueError("target_batch_size must be positive")
        if self.state_averaging_period < 1:
            raise ValueError("state_averaging_period must be at least 1")
        if self.progress_period <= 0:
            raise ValueError("progress_period must be positive")
