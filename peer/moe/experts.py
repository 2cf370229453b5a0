"""Expert modules: the built-in types and the registry users add their own to.

    @register_expert_class("my_expert", sample_input=lambda batch, hidden: torch.empty(batch, hidden))
    class MyExpert(nn.Module):
        def __init__(self, hidden_dim: int): ...

An expert class is built as `cls(hidden_dim)`. `sample_input(batch_size, hidden_dim)` returns one
tensor or a tuple of tensors: the server derives the expert's input schemas from it and its output
schemas from one forward pass. Installed packages can provide experts through the
`hivemind_platform.experts` entry-point group: the entry point names a module or a class; loading
it must register the class (with the decorator) or be an `nn.Module` class taking `hidden_dim`,
which is then registered with a `(batch, hidden_dim)` float32 input.

Built-ins: `ffn` (two linear layers with a GELU), `transformer` (one pre-norm encoder block over
`(batch, seq_len, hidden)` inputs), `nop` (returns its input, no parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hivemind_platform.experts"
TRANSFORMER_SEQ_LEN = 16

SampleInput = Callable[[int, int], "torch.Tensor | tuple[torch.Tensor, ...]"]
ModuleClass = TypeVar("ModuleClass", bound=type[nn.Module])


@dataclass(frozen=True)
class ExpertClass:
    """A registered expert type: how to build it and what its sample inputs look like."""

    name: str
    module_cls: type[nn.Module]
    sample_input: SampleInput

    def build(self, hidden_dim: int) -> nn.Module:
        return self.module_cls(hidden_dim)  # type: ignore[call-arg]

    def sample_inputs(self, batch_size: int, hidden_dim: int) -> tuple[torch.Tensor, ...]:
        sample = self.sample_input(batch_size, hidden_dim)
        return sample if isinstance(sample, tuple) else (sample,)


_REGISTRY: dict[str, ExpertClass] = {}


def register_expert_class(name: str, sample_input: SampleInput) -> Callable[[ModuleClass], ModuleClass]:
    """A class decorator that registers an expert type under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if not callable(sample_input):
        raise TypeError("sample_input must be a callable (batch_size, hidden_dim) -> tensor(s)")

    def decorator(cls: ModuleClass) -> ModuleClass:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"expert class {name!r} must be an nn.Module subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.module_cls is not cls:
            raise ValueError(f"an expert class named {name!r} is already registered ({existing.module_cls})")
        _REGISTRY[name] = ExpertClass(name, cls, sample_input)
        return cls

    return decorator


def get_expert_class(name: str) -> ExpertClass:
    """The registered expert type `name`, loading entry points on a miss; raises ValueError."""
    if name not in _REGISTRY:
        _load_entry_point(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown expert class {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_expert_classes() -> list[str]:
    return sorted(_REGISTRY)


def _load_entry_point(name: str) -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name != name:
            continue
        loaded = entry_point.load()
        if name not in _REGISTRY and isinstance(loaded, type) and issubclass(loaded, nn.Module):
            register_expert_class(name, _hidden_input)(loaded)
        logger.info("loaded expert class %s from entry point %s", name, entry_point.value)
        return


def _hidden_input(batch_size: int, hidden_dim: int) -> torch.Tensor:
    return torch.empty(batch_size, hidden_dim)


def _sequence_input(batch_size: int, hidden_dim: int) -> torch.Tensor:
    return torch.empty(batch_size, TRANSFORMER_SEQ_LEN, hidden_dim)


@register_expert_class("ffn", sample_input=_hidden_input)
class FeedforwardExpert(nn.Module):
    """hidden -> 4 * hidden -> GELU -> hidden."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.up = nn.Linear(hidden_dim, 4 * hidden_dim)
        self.down = nn.Linear(4 * hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


@register_expert_class("transformer", sample_input=_sequence_input)
class TransformerExpert(nn.Module):
    """One pre-norm Transformer encoder block (self-attention + feed-forward), without dropout."""

    def __init__(self, hidden_dim: int, num_heads: int | None = None):
        super().__init__()
        heads = num_heads or next(h for h in (8, 4, 2, 1) if hidden_dim % h == 0)
        self.block = nn.TransformerEncoderLayer(
            hidden_dim, heads, dim_feedforward=4 * hidden_dim, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


@register_expert_class("nop", sample_input=_hidden_input)
class NopExpert(nn.Module):
    """Returns its input; no parameters (a baseline for measuring the runtime and the network)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


__all__ = [
    "ENTRY_POINT_GROUP",
    "ExpertClass",
    "FeedforwardExpert",
    "NopExpert",
    "TransformerExpert",
    "get_expert_class",
    "register_expert_class",
    "registered_expert_classes",
]
