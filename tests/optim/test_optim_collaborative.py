"""Several peers in one process train one char-transformer through `peer.optim.Optimizer`."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from peer import DHT
from peer.dht import DHTConfig
from peer.optim import AveragingOptions, LocalUpdates, Optimizer, OptimizerConfig, run_validators
from peer.runs import get_recipe

CORPUS = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_bytes()
RECIPE_CONFIG = {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32}
BATCH = 16


def _swarm(num_peers: int, run_id: str) -> list[DHT]:
    config = DHTConfig(request_timeout=2.0)
    first = DHT(record_validators=run_validators(run_id), config=config)
    others = [
        DHT(initial_peers=first.get_visible_maddrs(), record_validators=run_validators(run_id), config=config)
        for _ in range(num_peers - 1)
    ]
    return [first, *others]


def _train(dhts: list[DHT], run_id: str, steps: int, **options) -> list[dict]:
    recipe = get_recipe("char-transformer", RECIPE_CONFIG)
    models = []
    for _ in dhts:  # the same initialization everywhere, as join does with the run's seed
        torch.manual_seed(0)
        models.append(recipe.build_model())
    config = OptimizerConfig(
        target_batch_size=64,
        state_averaging_period=2,
        progress_period=0.2,
        averaging=AveragingOptions(min_matchmaking_time=0.5, averaging_timeout=5.0),
        **options,
    )
    results: list[dict] = [{} for _ in dhts]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            optimizer = Optimizer(
                dht=dhts[index],
                run_id=run_id,
                params=models[index].parameters(),
                optimizer=lambda params: torch.optim.Adam(params, 3e-3),
                config=config,
                batch_size_per_step=BATCH,
            )
            batches = recipe.batches(CORPUS, BATCH, seed=index)
            losses = []
            for _ in range(steps):
                loss = recipe.loss(models[index], next(batches))
                loss.backward()
                optimizer.step(loss=loss.item())
                losses.append(loss.item())
            results[index] = {
                "losses": losses,
                "epoch": optimizer.local_epoch,
                "rounds": optimizer.num_averaging_rounds,
                "optimizer": optimizer,
            }
        except BaseException as e:  # surfaced by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(dhts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    for result in results:
        result.pop("optimizer").shutdown()
    results[0]["models"] = models
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _check_one_model(results: list[dict], min_epochs: int) -> None:
    for result in results:
        assert _mean(result["losses"][-5:]) < _mean(result["losses"][:5]) - 1.0
        assert result["epoch"] >= min_epochs and result["rounds"] >= 1
    first, *others = results[0]["models"]
    for other in others:  # state averaging every 2 epochs keeps the replicas together
        for a, b in zip(first.parameters(), other.parameters(), strict=True):
            assert torch.allclose(a, b, atol=0.02)  # at most the last epoch or two may differ


def test_gradient_averaging_trains_one_model_across_peers() -> None:
    dhts = _swarm(3, "grad")
    try:
        results = _train(dhts, "grad", steps=40)
    finally:
        for dht in dhts:
            dht.shutdown()
    _check_one_model(results, min_epochs=10)


def test_delayed_offloaded_steps_average_in_the_background() -> None:
    dhts = _swarm(2, "delayed")
    try:
        results = _train(dhts, "delayed", steps=40, delay_optimizer_step=True, offload_optimizer=True)
    finally:
        for dht in dhts:
            dht.shutdown()
    _check_one_model(results, min_epochs=6)


def test_local_updates_average_once_per_inner_steps() -> None:
    dhts = _swarm(2, "diloco")
    try:
        results = _train(dhts, "diloco", steps=60, local_updates=LocalUpdates(inner_steps=20))
    finally:
        for dht in dhts:
            dht.shutdown()
    for result in results:
        assert result["epoch"] == 3  # one outer step per 20 inner steps
        assert result["rounds"] <= 4  # 3 pseudo-gradient rounds, 1 state round (epoch 2)
        assert _mean(result["losses"][-5:]) < _mean(result["losses"][:5]) - 1.0
