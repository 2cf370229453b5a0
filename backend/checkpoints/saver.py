"""The checkpoint saver: the site keeps the swarm's latest model without being on the training path.

Every `period` seconds per run, `await saver.asave(manifest, dht)` downloads the swarm's state the
way a newcomer does: it builds the run's recipe model and the run's optimizer (`build_optimizer`,
so the state has exactly the swarm's tensors) as a client-mode peer on the caller's DHT, and
`catch_up()` loads the parameters and optimizer statistics from the most advanced peer. The model's
state_dict is stored with the epoch it came from. A client-mode peer never serves, never joins an
averaging group and publishes no progress, so training goes on untouched. Nothing is saved when
nobody serves a state, or when the swarm is still at the epoch of the last saved checkpoint.

The monitor owns one client DHT per run and drives the saver through `monitor_hook(saver)`, which it
calls after every poll (the site and `hivemind-site monitor` both install it):

    saver = CheckpointSaver.from_settings(settings)
    SwarmMonitor(config, sessions, secret_key=..., hooks=[monitor_hook(saver)])

The torch work runs in a worker thread, never on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import torch

from backend.checkpoints.store import Checkpoint, CheckpointStore, RecipeInfo
from backend.models import Run
from backend.presenters import manifest
from backend.settings import Settings
from peer.dht import DHT
from peer.errors import PeerError
from peer.runs import RunManifest, get_recipe, parse_manifest
from peer.runs.training import build_optimizer

logger = logging.getLogger(__name__)


def run_manifest(run: Run, public_url: str) -> RunManifest:
    """The manifest of a site's run, as a peer would read it (ManifestError if it is unusable)."""
    return _as_manifest(manifest(run, public_url))


def _as_manifest(manifest: RunManifest | Mapping[str, Any]) -> RunManifest:
    if isinstance(manifest, RunManifest):
        return manifest
    return parse_manifest(json.dumps(dict(manifest)), f"the manifest of run {manifest.get('slug')!r}")


class CheckpointSaver:
    """Downloads and stores the swarm's state of each run at most once per `period` seconds."""

    def __init__(self, store: CheckpointStore, *, period: float = 600.0):
        if not isinstance(period, (int, float)) or not period > 0:
            raise ValueError(f"period: expected a positive number of seconds, got {period!r}")
        self.store = store
        self.period = float(period)
        self._last_attempt: dict[str, float] = {}  # run slug -> time.time() of the last asave
        self._download_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointSaver:
        return cls(CheckpointStore.from_settings(settings), period=settings.checkpoint_period_s)

    def due(self, run_slug: str, now: float | None = None) -> bool:
        """Whether `run_slug` should be saved now (`now` in `time.time()` seconds). Before the first
        attempt in this process, the newest stored swarm checkpoint counts, so a restart does not
        download every run at once."""
        now = time.time() if now is None else now
        last = self._last_attempt.get(run_slug)
        if last is None:
            latest = self.store.latest(run_slug, source="swarm")
            last = latest.created_at.timestamp() if latest is not None else None
        return last is None or now - last >= self.period

    async def asave(
        self, manifest: RunManifest | Mapping[str, Any], dht: DHT, *, now: float | None = None
    ) -> Checkpoint | None:
        """Download the swarm's state of `manifest`'s run (a RunManifest or the site's manifest dict)
        through `dht` and store it; the stored checkpoint, or None when there was nothing new to save
        (see the module docstring). Failures of the swarm, the manifest or the run's recipe are logged
        and give None; disk errors raise."""
        try:
            manifest = _as_manifest(manifest)
        except PeerError as e:
            logger.warning("Cannot save a checkpoint: %s", e)
            return None
        self._last_attempt[manifest.slug] = time.time() if now is None else now
        try:
            return await asyncio.to_thread(self.save, manifest, dht)
        except PeerError as e:
            logger.warning("Saving the swarm's state of run %r failed: %s", manifest.slug, e)
            return None

    async def asave_if_due(
        self, manifest: RunManifest | Mapping[str, Any], dht: DHT, *, now: float | None = None
    ) -> Checkpoint | None:
        """`asave` when the run is `due`, else None: call it as often as you like (a monitor hook)."""
        slug = manifest.slug if isinstance(manifest, RunManifest) else str(manifest.get("slug", ""))
        if not self.due(slug, now):
            return None
        return await self.asave(manifest, dht, now=now)

    def save(self, manifest: RunManifest, dht: DHT) -> Checkpoint | None:
        """The blocking body of `asave`; never call it on an event loop."""
        downloaded = self.download(manifest, dht)
        if downloaded is None:
            logger.info("No peer of run %r serves its state; nothing saved", manifest.slug)
            return None
        state, epoch = downloaded
        latest = self.store.latest(manifest.slug, source="swarm")
        if latest is not None and latest.epoch == epoch:
            logger.info("Run %r is still at epoch %d, as its checkpoint %s", manifest.slug, epoch, latest.id)
            return None
        recipe = RecipeInfo(name=manifest.recipe.name, config=manifest.recipe.config)
        return self.store.save(manifest.slug, state, epoch=epoch, recipe=recipe, source="swarm")

    def download(self, manifest: RunManifest, dht: DHT) -> tuple[dict[str, torch.Tensor], int] | None:
        """The swarm's model state_dict and epoch, as a client-mode newcomer gets them; None when no
        peer serves a state."""
        recipe = get_recipe(manifest.recipe.name, manifest.recipe.config, manifest.recipe.package)
        # one download at a time: the optimizer's averagers register their RPC methods on the DHT
        with self._download_lock:
            model = recipe.build_model()
            optimizer = build_optimizer(manifest, model, dht, client_mode=True)
            try:
                if not optimizer.catch_up():
                    return None
                epoch = optimizer.local_epoch
                state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
            finally:
                optimizer.shutdown()
        return state, epoch


def monitor_hook(saver: CheckpointSaver) -> Callable[[Any, DHT], Awaitable[None]]:
    """The saver as a swarm-monitor hook: after each poll of a run, save its state when it is due."""

    async def save_if_due(spec: Any, dht: DHT) -> None:
        await saver.asave_if_due(spec.manifest, dht)

    return save_if_due
