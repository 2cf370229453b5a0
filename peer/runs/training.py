"""From a run manifest to a `peer.Optimizer`: the one place that reads the manifest's `optimizer`,
`averaging` and `compression` sections, so a volunteer (`join`) and the site's checkpoint saver build
exactly the same optimizer state (the same tensors, in the same order, for state downloads)."""

from __future__ import annotations

import torch

from peer.dht import DHT
from peer.optim import AveragingOptions, LocalUpdates, Optimizer, OptimizerConfig
from peer.runs.manifest import RunManifest


def optimizer_config(manifest: RunManifest, *, client_mode: bool = False) -> OptimizerConfig:
    """The collaborative optimizer's options for `manifest` (defaults where it is silent)."""
    averaging = manifest.averaging
    local = averaging.get("local_updates")
    return OptimizerConfig(
        target_batch_size=manifest.target_batch_size,
        state_averaging_period=int(averaging.get("state_averaging_period", 5)),
        client_mode=client_mode,
        local_updates=LocalUpdates(inner_steps=int(local)) if local else None,
        averaging=AveragingOptions(
            target_group_size=int(averaging.get("target_group_size", 4)),
            min_group_size=int(averaging.get("min_group_size", 2)),
            min_matchmaking_time=float(averaging.get("min_matchmaking_time", 2.0)),
            averaging_timeout=float(averaging.get("averaging_timeout", 15.0)),
        ),
    )


def build_optimizer(
    manifest: RunManifest,
    model: torch.nn.Module,
    dht: DHT,
    *,
    client_mode: bool = False,
    batch_size: int | None = None,
) -> Optimizer:
    """The run's `peer.Optimizer` over `model`'s parameters (AdamW with the manifest's lr and
    weight decay)."""
    settings = dict(manifest.optimizer)
    lr = float(settings.get("lr", 1e-3))
    weight_decay = float(settings.get("weight_decay", 0.0))
    return Optimizer(
        dht=dht,
        run_id=manifest.slug,
        params=model.parameters(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        config=optimizer_config(manifest, client_mode=client_mode),
        batch_size_per_step=batch_size,
    )
