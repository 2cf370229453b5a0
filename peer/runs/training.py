"""From a run manifest to a `peer.Optimizer`: the one place that reads the manifest's `optimizer`,
`averaging` and `compression` sections, so a volunteer (`join`) and the site's checkpoint saver build
exactly the same optimizer state (the same tensors, in the same order, for state downloads).

    "optimizer":   {"name": "adamw" | "adam" | "sgd", "lr", "weight_decay", "betas", "momentum",
                    "delay_optimizer_step"}
    "averaging":   {"target_group_size", "min_group_size", "min_matchmaking_time", "request_timeout",
                    "averaging_timeout", "state_averaging_period", "progress_period",
                    "local_updates": H | {"inner_steps", "outer_lr", "outer_momentum"} | null}
    "compression": {"gradients": CODEC, "state": CODEC}
    CODEC = "none" | "float16" | "scaled-float16" | "uniform-8bit" | "blockwise-8bit"
          | {"codec": "size-adaptive", "threshold", "less": CODEC, "greater_equal": CODEC}

Every section is optional and every key has a default. Unknown keys and codec names are refused with a
`ManifestError` that lists the valid ones (a typo must not silently train with defaults). Peers
average only with peers whose codecs match, so codecs are the run's choice, in the manifest; so is
`delay_optimizer_step` (its one-step-stale gradients change the training). Offloading the optimizer
to CPU memory changes nothing but memory use, so it is the volunteer's choice (`offload_optimizer`,
`hivemind-peer join --offload-optimizer`) and not a manifest key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pydantic
import torch

from peer.compression import (
    BlockwiseQuantization,
    CompressionBase,
    Float16Compression,
    NoCompression,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from peer.dht import DHT
from peer.optim import AveragingOptions, LocalUpdates, Optimizer, OptimizerConfig
from peer.runs.manifest import ManifestError, RunManifest

CODECS: dict[str, Callable[[], CompressionBase]] = {
    "none": NoCompression,
    "float16": Float16Compression,
    "scaled-float16": ScaledFloat16Compression,
    "uniform-8bit": Uniform8BitQuantization,
    "blockwise-8bit": BlockwiseQuantization,
}
CODEC_ALIASES = {"fp16": "float16", "scaled-fp16": "scaled-float16"}
COMPRESSION_ROLES = ("gradients", "state")


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class OptimizerSection(_Section):
    """The manifest's `optimizer` section: the inner optimizer every peer runs."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = pydantic.Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = pydantic.Field(0.0, ge=0, allow_inf_nan=False)
    betas: tuple[float, float] = (0.9, 0.999)  # adam and adamw
    momentum: float = pydantic.Field(0.0, ge=0, lt=1)  # sgd
    delay_optimizer_step: bool = False

    def factory(self) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
        if self.name == "sgd":
            return lambda params: torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        cls = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        return lambda params: cls(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


class LocalUpdatesSection(_Section):
    inner_steps: int = pydantic.Field(ge=1)
    outer_lr: float = pydantic.Field(0.7, gt=0, allow_inf_nan=False)
    outer_momentum: float = pydantic.Field(0.9, ge=0, lt=1)


class AveragingSection(_Section):
    """The manifest's `averaging` section: how peers meet and how often they average."""

    target_group_size: int = pydantic.Field(4, ge=2)
    min_group_size: int = pydantic.Field(2, ge=2)
    min_matchmaking_time: float = pydantic.Field(2.0, gt=0, allow_inf_nan=False)
    request_timeout: float = pydantic.Field(3.0, gt=0, allow_inf_nan=False)
    averaging_timeout: float = pydantic.Field(15.0, gt=0, allow_inf_nan=False)
    state_averaging_period: int = pydantic.Field(5, ge=1)
    progress_period: float = pydantic.Field(1.0, gt=0, allow_inf_nan=False)
    local_updates: LocalUpdatesSection | None = None  # H is short for {"inner_steps": H}

    @pydantic.field_validator("local_updates", mode="before")
    @classmethod
    def _inner_steps_shorthand(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("give the number of inner steps (e.g. 50), an object or null, not a boolean")
        return {"inner_steps": value} if isinstance(value, int) else value

    def local(self) -> LocalUpdates | None:
        return None if self.local_updates is None else LocalUpdates(**self.local_updates.model_dump())


def _section(model: type[_Section], manifest: RunManifest, name: str) -> Any:
    values = getattr(manifest, name)
    known = sorted(model.model_fields)
    for key in values:
        if key == "offload_optimizer":
            raise ManifestError(
                f"the manifest's {name} section sets offload_optimizer, but offloading is each volunteer's "
                "choice (hivemind-peer join --offload-optimizer); remove it from the manifest"
            )
        if key not in model.model_fields:
            raise ManifestError(
                f"the manifest's {name} section has an unknown key {key!r}; known keys: {', '.join(known)}"
            )
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ManifestError(f"the manifest's {name} section is invalid at {where}: {first['msg']}") from None


def parse_codec(spec: object, where: str = "compression") -> CompressionBase:
    """The codec a manifest names (see the module docstring); ManifestError listing the valid names."""
    valid = ", ".join([*CODECS, "{'codec': 'size-adaptive', ...}"])
    if isinstance(spec, str):
        name = CODEC_ALIASES.get(spec, spec)
        if name not in CODECS:
            raise ManifestError(f"the manifest's {where} names an unknown codec {spec!r}; valid: {valid}")
        return CODECS[name]()
    if isinstance(spec, dict) and spec.get("codec") == "size-adaptive":
        unknown = set(spec) - {"codec", "threshold", "less", "greater_equal"}
        if unknown:
            raise ManifestError(
                f"the manifest's {where} (size-adaptive) has unknown keys {sorted(unknown)}; "
                "known keys: codec, threshold, less, greater_equal"
            )
        threshold = spec.get("threshold", 2**16)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ManifestError(f"the manifest's {where}.threshold must be a non-negative integer")
        return SizeAdaptiveCompression(
            threshold,
            less=parse_codec(spec.get("less", "float16"), f"{where}.less"),
            greater_equal=parse_codec(spec.get("greater_equal", "blockwise-8bit"), f"{where}.greater_equal"),
        )
    if isinstance(spec, dict) and isinstance(spec.get("codec"), str):
        if set(spec) != {"codec"}:
            raise ManifestError(f"the manifest's {where}: only size-adaptive codecs take options")
        return parse_codec(spec["codec"], where)
    raise ManifestError(f"the manifest's {where} must name a codec, one of: {valid}; got {spec!r}")


def compression_codecs(manifest: RunManifest) -> dict[str, CompressionBase]:
    """The codec of each role ("gradients", "state") from the manifest's `compression` section."""
    section = manifest.compression
    for role in section:
        if role not in COMPRESSION_ROLES:
            raise ManifestError(
                f"the manifest's compression section has an unknown role {role!r}; known roles: "
                f"{', '.join(COMPRESSION_ROLES)} (each maps to a codec: {', '.join(CODECS)})"
            )
    return {role: parse_codec(section.get(role, "none"), f"compression.{role}") for role in COMPRESSION_ROLES}


def optimizer_config(
    manifest: RunManifest, *, client_mode: bool = False, offload_optimizer: bool = False
) -> OptimizerConfig:
    """The collaborative optimizer's options for `manifest` (defaults where it is silent); a
    ManifestError for anything invalid in its optimizer, averaging or compression sections."""
    optimizer = _section(OptimizerSection, manifest, "optimizer")
    averaging = _section(AveragingSection, manifest, "averaging")
    codecs = compression_codecs(manifest)
    try:
        return OptimizerConfig(
            target_batch_size=manifest.target_batch_size,
            state_averaging_period=averaging.state_averaging_period,
            client_mode=client_mode,
            delay_optimizer_step=optimizer.delay_optimizer_step,
            offload_optimizer=offload_optimizer,
            local_updates=averaging.local(),
            progress_period=averaging.progress_period,
            averaging=AveragingOptions(
                target_group_size=averaging.target_group_size,
                min_group_size=averaging.min_group_size,
                min_matchmaking_time=averaging.min_matchmaking_time,
                request_timeout=averaging.request_timeout,
                averaging_timeout=averaging.averaging_timeout,
                gradient_compression=codecs["gradients"],
                state_compression=codecs["state"],
            ),
        )
    except ValueError as e:
        raise ManifestError(f"the manifest's averaging section is inconsistent: {e}") from None


MANIFEST_SECTIONS = ("optimizer", "averaging", "compression")


def check_section(name: str, values: dict[str, Any]) -> None:
    """Raise ManifestError if a manifest's `optimizer`, `averaging` or `compression` section (`name`)
    is invalid on its own: the site checks what organizers enter with it, before any peer joins."""
    if name not in MANIFEST_SECTIONS:
        raise ValueError(f"name: expected one of {', '.join(MANIFEST_SECTIONS)}, got {name!r}")
    fields: dict[str, Any] = {"recipe": {"name": "probe"}, name: values}  # validated by pydantic
    probe = RunManifest(slug="probe", protocol_version=1, target_batch_size=1, **fields)
    optimizer_config(probe)


def build_optimizer(
    manifest: RunManifest,
    model: torch.nn.Module,
    dht: DHT,
    *,
    client_mode: bool = False,
    batch_size: int | None = None,
    offload_optimizer: bool = False,
) -> Optimizer:
    """The run's `peer.Optimizer` over `model`'s parameters (see the module docstring)."""
    config = optimizer_config(manifest, client_mode=client_mode, offload_optimizer=offload_optimizer)
    return Optimizer(
        dht=dht,
        run_id=manifest.slug,
        params=model.parameters(),
        optimizer=_section(OptimizerSection, manifest, "optimizer").factory(),
        config=config,
        batch_size_per_step=batch_size,
    )
