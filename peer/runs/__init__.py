"""Runs: what a volunteer joins.

peer.runs.manifest          RunManifest and load_manifest (site URL, manifest URL, file)
peer.runs.recipes           Recipe, the registry and entry points, get_recipe
peer.runs.char_transformer  the built-in `char-transformer` recipe
peer.runs.data              fetch_dataset: download, verify sha256, cache
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
from peer.runs.recipes import Recipe, RecipeConfigError, RecipeNotFoundError, available_recipes, get_recipe

__all__ = [
    "MANIFEST_PROTOCOL_VERSION",
    "DatasetError",
    "ManifestError",
    "Recipe",
    "RecipeConfigError",
    "RecipeNotFoundError",
    "RunManifest",
    "available_recipes",
    "fetch_dataset",
    "get_recipe",
    "load_manifest",
    "parse_manifest",
]
