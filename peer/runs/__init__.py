"""Runs: what a volunteer joins.

peer.runs.manifest          RunManifest and load_manifest (site URL, manifest URL, file)
peer.runs.recipes           Recipe, the registry and entry points, get_recipe
peer.runs.char_transformer  the built-in `char-transformer` recipe
peer.runs.moe_char_transformer  the built-in `moe-char-transformer` recipe (remote experts as FFN layers)
peer.runs.experts           ExpertHost: the share of a MoE run's expert grid a volunteer hosts
peer.runs.download          fetch_verified: a file by URL and sha256, cached, never half-written
peer.runs.data              fetch_dataset: the run's dataset through fetch_verified
peer.runs.seed              load_initial_state: a seeded run's checkpoint, verified, into the model
peer.runs.training          build_optimizer: the manifest's optimizer, averaging and compression
peer.runs.join              Volunteer: the `hivemind-peer join` session
"""

from peer.runs.data import DatasetError, fetch_dataset
from peer.runs.manifest import (
    MANIFEST_PROTOCOL_VERSION,
    ManifestError,
    RunManifest,
    load_manifest,
    parse_manifest,
)
from peer.runs.recipes import (
    ExpertSpec,
    Recipe,
    RecipeConfigError,
    RecipeNotFoundError,
    available_recipes,
    get_recipe,
)
from peer.runs.seed import SeedError, check_state_dict, load_initial_state

__all__ = [
    "MANIFEST_PROTOCOL_VERSION",
    "DatasetError",
    "ExpertSpec",
    "ManifestError",
    "Recipe",
    "RecipeConfigError",
    "RecipeNotFoundError",
    "RunManifest",
    "SeedError",
    "available_recipes",
    "check_state_dict",
    "fetch_dataset",
    "get_recipe",
    "load_initial_state",
    "load_manifest",
    "parse_manifest",
]
