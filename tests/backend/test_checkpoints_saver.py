"""The checkpoint saver against a real in-process swarm, and the store's files on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import typing
from pathlib import Path

import pytest
import torch

from backend.checkpoints import CheckpointSaver, CheckpointStore, RecipeInfo
from backend.errors import NotFound
from peer import DHT
from peer.dht import DHTConfig
from peer.optim import run_validators
from peer.runs import RunManifest, get_recipe
from peer.runs.training import build_optimizer

CORPUS = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_bytes()
RECIPE = {"name": "char-transformer", "config": {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32}}
BATCH = 16


def _manifest(slug: str) -> RunManifest:
    return RunManifest.model_validate(
        {
            "slug": slug,
            "protocol_version": 1,
            "recipe": RECIPE,
            "target_batch_size": 2 * BATCH,
            "optimizer": {"lr": 0.003},
            "averaging": {"min_matchmaking_time": 0.5, "averaging_timeout": 4, "state_averaging_period": 2},
        }
    )


def _train(manifest: RunManifest, dhts: list[DHT], steps: int) -> list:
    """Each DHT's peer trains `steps` batches in its own thread; returns (model, optimizer) pairs,
    the optimizers still running so that they serve their state."""
    recipe = get_recipe(RECIPE["name"], RECIPE["config"])
    peers = []
    for dht in dhts:
        torch.manual_seed(0)  # the run's seed: every fresh peer starts from the same model
        model = recipe.build_model()
        peers.append((model, build_optimizer(manifest, model, dht, batch_size=BATCH)))
    errors: list[BaseException] = []

    def train(index: int) -> None:
        model, optimizer = peers[index]
        batches = recipe.batches(CORPUS, BATCH, seed=index)
        try:
            for _ in range(steps):
                loss = recipe.loss(model, next(batches))
                loss.backward()
                optimizer.step(loss=loss.item())
        except BaseException as e:  # surfaced by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=train, args=(index,)) for index in range(len(dhts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    return peers


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_saver_downloads_the_swarm_state_as_a_client(tmp_path: Path) -> None:
    slug = "ckpt-swarm"
    manifest = _manifest(slug)
    config = DHTConfig(request_timeout=2.0)
    first = DHT(record_validators=run_validators(slug), config=config)
    dhts = [first, DHT(initial_peers=first.get_visible_maddrs(), record_validators=run_validators(slug))]
    site = DHT(
        initial_peers=first.get_visible_maddrs(), client_mode=True, record_validators=run_validators(slug)
    )
    peers = []
    try:
        peers = _train(manifest, dhts, steps=12)
        store = CheckpointStore(tmp_path / "checkpoints", keep=3)
        saver = CheckpointSaver(store, period=600)
        assert saver.due(slug)
        site_manifest = manifest.model_dump(mode="json")  # the site hands the saver its manifest dict
        checkpoint = asyncio.run(saver.asave_if_due(site_manifest, site))
        assert checkpoint is not None and checkpoint.source == "swarm"
        assert not saver.due(slug) and saver.due(slug, now=checkpoint.created_at.timestamp() + 601)
        assert asyncio.run(saver.asave_if_due(manifest, site)) is None  # not due: no download
        assert not CheckpointSaver(store, period=600).due(slug)  # a restarted site counts the stored one
        # loading it into the recipe's model reproduces a serving peer's parameters and epoch
        model = get_recipe(RECIPE["name"], RECIPE["config"]).build_model()
        model.load_state_dict(torch.load(store.path(checkpoint), weights_only=True))
        matches = [
            optimizer.local_epoch
            for peer_model, optimizer in peers
            if _same_state(model.state_dict(), peer_model.state_dict())
        ]
        assert checkpoint.epoch in matches and checkpoint.epoch >= 2, (checkpoint.epoch, matches)
        assert not _same_state(model.state_dict(), _fresh_model().state_dict())  # it trained
        # the sidecar says what the file is
        sidecar = json.loads((store.run_dir(slug) / f"{checkpoint.id}.json").read_text())
        data = store.path(checkpoint).read_bytes()
        assert sidecar["sha256"] == hashlib.sha256(data).hexdigest() and sidecar["size"] == len(data)
        assert sidecar["recipe"] == RECIPE and sidecar["run"] == slug and sidecar["source"] == "swarm"
        assert sidecar["epoch"] == checkpoint.epoch and sidecar["id"] == checkpoint.id
        assert sorted(p.name for p in store.run_dir(slug).iterdir()) == sorted(
            [f"{checkpoint.id}.pt", f"{checkpoint.id}.json"]
        )
        # the swarm is still at that epoch: nothing new to save
        assert asyncio.run(saver.asave(manifest, site)) is None and len(store.list(slug)) == 1
        # a run that nobody serves: nothing is saved
        assert asyncio.run(saver.asave(_manifest("ckpt-nobody"), site)) is None
        assert store.list("ckpt-nobody") == []
    finally:
        for _, optimizer in peers:
            optimizer.shutdown()
        for dht in (site, *dhts):
            dht.shutdown()


def _fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_recipe(RECIPE["name"], RECIPE["config"]).build_model()


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((3, 2), value), "bias": torch.zeros(3)}


def test_store_keeps_the_newest_swarm_checkpoints_and_the_newest_seed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    recipe = RecipeInfo(name="char-transformer", config={})
    seeds = [store.save("run", _state(-i), epoch=0, recipe=recipe, source="upload") for i in range(2)]
    saved = [store.save("run", _state(i), epoch=i, recipe=recipe, source="swarm") for i in range(4)]
    listed = store.list("run")
    assert [c.id for c in listed] == [saved[3].id, saved[2].id, seeds[1].id]  # newest first
    assert store.initial_state("run") == seeds[1] and store.latest("run", source="swarm") == saved[3]
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == sorted(f"{c.id}{suffix}" for c in listed for suffix in (".pt", ".json"))  # no .tmp
    loaded = torch.load(store.path(saved[3]), weights_only=True)
    assert torch.equal(loaded["weight"], torch.full((3, 2), 3.0))
    assert store.list("other") == []


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    recipe = RecipeInfo(name="char-transformer", config={})

    def disk_full(obj, file) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.save("run", _state(1), epoch=1, recipe=recipe, source="swarm")
    assert list((tmp_path / "run").iterdir()) == [] and store.list("run") == []
    with pytest.raises(ValueError, match="epoch"):
        store.save("run", _state(1), epoch=-1, recipe=recipe, source="swarm")


def test_crash_leftovers_are_ignored_then_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    recipe = RecipeInfo(name="char-transformer", config={})
    directory = tmp_path / "run"
    directory.mkdir()
    leftovers = [directory / ".20240101T000000Z-0badf00d.pt.tmp", directory / "20240101T000000Z-0badf00d.pt"]
    for path in leftovers:
        path.write_bytes(b"half")
    unreadable = [directory / "20240101T000000Z-00000000.json", directory / "20240101T000000Z-00000000.pt"]
    unreadable[0].write_text("{not json")  # a corrupt sidecar: skipped, and its model is kept
    unreadable[1].write_bytes(b"model")
    assert store.list("run") == []
    old = 1_000_000_000
    for path in leftovers + unreadable:
        os.utime(path, (old, old))
    saved = store.save("run", _state(1), epoch=1, recipe=recipe, source="swarm")
    assert not any(path.exists() for path in leftovers) and all(path.exists() for path in unreadable)
    assert store.list("run") == [saved]


@pytest.mark.parametrize("checkpoint_id", ["../../etc/passwd", "..", "20240101T000000Z-0badf00d/../x", ""])
def test_ids_and_slugs_cannot_leave_the_directory(tmp_path: Path, checkpoint_id: str) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(NotFound):
        store.get("run", checkpoint_id)
    with pytest.raises(ValueError, match="run"):
        store.run_dir("../run")


def test_saver_and_store_refuse_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
    with pytest.raises(ValueError, match="period"):
        CheckpointSaver(CheckpointStore(tmp_path), period=0)
    saver = CheckpointSaver(CheckpointStore(tmp_path))
    no_dht = typing.cast(DHT, None)  # never reached: these fail before any download
    assert asyncio.run(saver.asave({"slug": "broken", "protocol_version": 1}, no_dht)) is None
    unknown_recipe = {
        "slug": "bad",
        "protocol_version": 1,
        "recipe": {"name": "nope"},
        "target_batch_size": 1,
    }
    assert asyncio.run(saver.asave(unknown_recipe, no_dht)) is None
