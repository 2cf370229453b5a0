"""The manifest's optimizer, averaging and compression sections, as `peer.runs.training` reads them:
every option reaches `OptimizerConfig`, and every mistake is a ManifestError that says what is valid."""

from __future__ import annotations

import json

import pytest
import torch

from peer.compression import (
    BlockwiseQuantization,
    Float16Compression,
    NoCompression,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from peer.optim import LocalUpdates
from peer.runs import ManifestError, parse_manifest
from peer.runs.training import OptimizerSection, compression_codecs, optimizer_config


def _manifest(**sections):
    document = {"slug": "run", "protocol_version": 1, "recipe": {"name": "char-transformer"}}
    return parse_manifest(json.dumps({**document, "target_batch_size": 256, **sections}))


def test_an_empty_manifest_gets_the_defaults() -> None:
    config = optimizer_config(_manifest())
    assert config.target_batch_size == 256 and config.state_averaging_period == 5
    assert not config.delay_optimizer_step and not config.offload_optimizer and config.local_updates is None
    assert isinstance(config.averaging.gradient_compression, NoCompression)
    assert isinstance(config.averaging.state_compression, NoCompression)


def test_every_option_reaches_the_optimizer_config() -> None:
    manifest = _manifest(
        optimizer={"name": "adam", "lr": 0.01, "delay_optimizer_step": True},
        averaging={
            "target_group_size": 8,
            "min_group_size": 3,
            "min_matchmaking_time": 1.5,
            "request_timeout": 4,
            "averaging_timeout": 20,
            "state_averaging_period": 7,
            "progress_period": 0.5,
            "local_updates": {"inner_steps": 100, "outer_lr": 0.5, "outer_momentum": 0.8},
        },
        compression={"gradients": "fp16", "state": "scaled-float16"},
    )
    config = optimizer_config(manifest, client_mode=True, offload_optimizer=True)
    assert config.delay_optimizer_step and config.offload_optimizer and config.client_mode
    assert config.state_averaging_period == 7 and config.progress_period == 0.5
    assert config.local_updates == LocalUpdates(inner_steps=100, outer_lr=0.5, outer_momentum=0.8)
    options = config.averaging
    assert (options.target_group_size, options.min_group_size) == (8, 3)
    assert (options.min_matchmaking_time, options.request_timeout, options.averaging_timeout) == (1.5, 4, 20)
    assert isinstance(options.gradient_compression, Float16Compression)
    assert isinstance(options.state_compression, ScaledFloat16Compression)
    assert optimizer_config(_manifest(averaging={"local_updates": 50})).local_updates == LocalUpdates(50)


def test_codecs_by_name_and_size() -> None:
    for name, cls in [
        ("none", NoCompression),
        ("float16", Float16Compression),
        ("uniform-8bit", Uniform8BitQuantization),
        ("blockwise-8bit", BlockwiseQuantization),
    ]:
        assert isinstance(compression_codecs(_manifest(compression={"gradients": name}))["gradients"], cls)
    spec = {"codec": "size-adaptive", "threshold": 1000, "less": "none", "greater_equal": "uniform-8bit"}
    codec = compression_codecs(_manifest(compression={"state": spec}))["state"]
    assert isinstance(codec, SizeAdaptiveCompression) and codec.threshold == 1000
    assert isinstance(codec.less, NoCompression) and isinstance(codec.greater_equal, Uniform8BitQuantization)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"compression": {"gradients": "zip"}}, "unknown codec 'zip'; valid: none, float16, scaled-float16"),
        ({"compression": {"codec": "float16"}}, "unknown role 'codec'; known roles: gradients, state"),
        ({"compression": {"state": {"codec": "size-adaptive", "less": "nope"}}}, "state.less names an"),
        ({"compression": {"state": {"codec": "size-adaptive", "threshold": -1}}}, "non-negative integer"),
        ({"compression": {"gradients": {"codec": "float16", "level": 3}}}, "only size-adaptive codecs"),
        ({"compression": {"gradients": 16}}, "must name a codec"),
        ({"optimizer": {"name": "lamb"}}, "'adamw', 'adam' or 'sgd'"),
        ({"optimizer": {"lrr": 0.1}}, "unknown key 'lrr'; known keys: betas, delay_optimizer_step, lr"),
        ({"optimizer": {"lr": -1}}, "invalid at lr"),
        ({"optimizer": {"offload_optimizer": True}}, "join --offload-optimizer"),
        ({"averaging": {"local_updates": True}}, "number of inner steps"),
        ({"averaging": {"local_updates": {"inner_steps": 0}}}, "local_updates.inner_steps"),
        ({"averaging": {"min_group_size": 5}}, "min_group_size <= target_group_size"),
        ({"averaging": {"averaging_timeout": 0}}, "averaging_timeout"),
    ],
)
def test_mistakes_are_manifest_errors_that_say_what_is_valid(sections: dict, message: str) -> None:
    with pytest.raises(ManifestError, match="the manifest's") as error:
        optimizer_config(_manifest(**sections))
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_the_optimizer_section_builds_its_optimizer(name: str) -> None:
    section = OptimizerSection(name=name, lr=0.5, weight_decay=0.1, momentum=0.9)
    inner = section.factory()([torch.zeros(3, requires_grad=True)])
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    assert type(inner) is expected
    assert inner.param_groups[0]["lr"] == 0.5 and inner.param_groups[0]["weight_decay"] == 0.1
