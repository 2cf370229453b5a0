"""Recipes: the training code a run names. A peer only runs recipes it already has.

A recipe builds the model, turns the run's corpus into batches and computes the loss. Built in:
`char-transformer` (a small GPT-style character model) and `moe-char-transformer` (the same with
its feed-forward layers as remote experts served by the swarm). Third-party recipes are Python
packages that register a `Recipe` subclass under the entry-point group `hivemind_platform.recipes`:

    [project.entry-points."hivemind_platform.recipes"]
    my-recipe = "my_package.recipes:MyRecipe"

An unknown recipe gets a `RecipeNotFoundError` that names the package to install.

Mixture-of-Experts recipes also say which experts the swarm hosts: `expert_uids()` (the grid) and
`expert_spec()` (how a hosting peer builds each expert). `build_model()` never touches the network
(the site's checkpoint saver builds models too); the join flow then calls `attach_swarm(model, dht,
expert_server)` so the model's remote layers can find and call their experts.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import torch
from torch import nn

from peer.errors import PeerError

if TYPE_CHECKING:
    from peer.dht import DHT
    from peer.moe import Server

ENTRY_POINT_GROUP = "hivemind_platform.recipes"


class RecipeNotFoundError(PeerError):
    """The run names a recipe this peer does not have."""


class RecipeConfigError(PeerError, ValueError):
    """The manifest's recipe config does not fit the recipe."""


Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ExpertSpec:
    """How a peer that hosts a recipe's experts builds each of them: a registered `peer.moe` expert
    class built as `cls(hidden_dim)`, trained by Adam with `lr` on the hosting server."""

    expert_cls: str
    hidden_dim: int
    lr: float = 1e-3


class Recipe(abc.ABC):
    """What a run trains and how. Subclasses set `name` and a pydantic `Config` model."""

    name: ClassVar[str]
    Config: ClassVar[type[pydantic.BaseModel]]

    def __init__(self, config: Mapping[str, Any] | None = None):
        try:
            self.config = self.Config.model_validate(dict(config or {}))
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise RecipeConfigError(f"recipe {self.name!r}: config field {where!r}: {first['msg']}") from None

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialized model (the same architecture on every peer)."""

    @abc.abstractmethod
    def batches(self, corpus: bytes, batch_size: int, seed: int) -> Iterator[Batch]:
        """An endless stream of (inputs, targets) batches from `corpus`, in an order set by `seed`."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar training loss of `model` on `batch`."""

    def expert_uids(self) -> list[str]:
        """Every expert UID of the run's Mixture-of-Experts grid (e.g. `ffn0.3.1`); empty when the
        model has no remote experts. The swarm serves them; the site's monitor shows which are live."""
        return []

    def expert_spec(self) -> ExpertSpec | None:
        """How to build the experts of `expert_uids()`; None when the model has no remote experts."""
        return None

    def attach_swarm(  # noqa: B027  (an optional hook; dense recipes keep the no-op)
        self, model: nn.Module, dht: DHT, expert_server: Server | None = None
    ) -> None:
        """Connect `model`'s remote layers to the swarm: find experts through `dht`, and call those of
        `expert_server` (this peer's own) in-process. Dense recipes have nothing to connect."""


_BUILTIN: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator for built-in recipes."""
    _BUILTIN[cls.name] = cls
    return cls


def get_recipe(name: str, config: Mapping[str, Any] | None = None, package: str | None = None) -> Recipe:
    """Instantiate the recipe `name` with `config`; RecipeNotFoundError naming what to install."""
    _load_builtins()
    cls = _BUILTIN.get(name)
    if cls is None:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                cls = entry.load()
                break
    if cls is None:
        hint = (
            f"pip install {package}"
            if package
            else f"install the package that provides it ({ENTRY_POINT_GROUP})"
        )
        known = ", ".join(sorted(available_recipes()))
        raise RecipeNotFoundError(f"this peer has no recipe {name!r}: {hint}. Recipes here: {known}")
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise RecipeNotFoundError(f"entry point {name!r} does not name a Recipe subclass")
    return cls(config)


def available_recipes() -> list[str]:
    _load_builtins()
    return sorted({*_BUILTIN, *(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))})


def _load_builtins() -> None:
    from peer.runs import char_transformer, moe_char_transformer  # noqa: F401  (they register themselves)
