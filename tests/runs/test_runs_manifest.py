"""Manifests, recipes and datasets: each bad input gets an error that says what to do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from peer.runs import (
    MANIFEST_PROTOCOL_VERSION,
    DatasetError,
    ManifestError,
    RecipeConfigError,
    RecipeNotFoundError,
    fetch_dataset,
    get_recipe,
    load_manifest,
    parse_manifest,
)
from peer.runs.manifest import DatasetSpec, manifest_url


def _manifest(**overrides) -> dict:
    document = {
        "slug": "tiny",
        "name": "Tiny run",
        "protocol_version": MANIFEST_PROTOCOL_VERSION,
        "recipe": {"name": "char-transformer", "config": {"d_model": 32, "n_heads": 2, "seq_len": 16}},
        "dataset": None,
        "target_batch_size": 64,
        "initial_peers": [],
        "auth": {"mode": "open"},
    }
    document.update(overrides)
    return document


def test_a_manifest_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_manifest()))
    manifest = load_manifest(str(path))
    assert manifest.slug == "tiny" and manifest.recipe.config["d_model"] == 32
    assert load_manifest(path.as_uri()) == manifest


def test_run_page_urls_map_to_the_manifest_endpoint() -> None:
    assert (
        manifest_url("http://site.example:8000/runs/tiny")
        == "http://site.example:8000/api/v1/runs/tiny/manifest"
    )
    assert manifest_url("https://x.org/runs/a-b_c/") == "https://x.org/api/v1/runs/a-b_c/manifest"
    assert manifest_url("/tmp/run.json") == "/tmp/run.json"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps(_manifest(protocol_version=99)), "manifest protocol 99"),
        (json.dumps(_manifest(target_batch_size=0)), "target_batch_size"),
        (json.dumps(_manifest(slug="../../etc")), "slug"),
        (json.dumps(_manifest(auth={"mode": "token"})), "authority_public_key"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(data: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        parse_manifest(data)


def test_an_unreachable_site_is_named() -> None:
    with pytest.raises(ManifestError, match="cannot reach the site"):
        load_manifest("http://127.0.0.1:9/runs/tiny", timeout=2)


def test_a_missing_manifest_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read the manifest file"):
        load_manifest(str(tmp_path / "missing.json"))


def test_unknown_recipes_name_the_package_to_install() -> None:
    with pytest.raises(RecipeNotFoundError, match="pip install fancy-recipes"):
        get_recipe("fancy", {}, package="fancy-recipes")
    with pytest.raises(RecipeNotFoundError, match="char-transformer"):
        get_recipe("fancy", {})


def test_recipe_config_errors_name_the_field() -> None:
    with pytest.raises(RecipeConfigError, match="d_model"):
        get_recipe("char-transformer", {"d_model": "big"})
    with pytest.raises(RecipeConfigError, match="unknown_option"):
        get_recipe("char-transformer", {"unknown_option": 1})


def test_char_transformer_batches_are_seeded_and_the_loss_is_finite() -> None:
    recipe = get_recipe("char-transformer", {"d_model": 16, "n_heads": 2, "n_layers": 1, "seq_len": 8})
    corpus = b"the quick brown fox jumps over the lazy dog " * 10
    first = next(recipe.batches(corpus, 4, seed=1))
    again = next(recipe.batches(corpus, 4, seed=1))
    other = next(recipe.batches(corpus, 4, seed=2))
    assert first[0].equal(again[0]) and not first[0].equal(other[0])
    assert first[0][:, 1:].equal(first[1][:, :-1])  # targets are the inputs shifted by one
    loss = recipe.loss(recipe.build_model(), first)
    assert loss.isfinite() and 4.0 < loss.item() < 7.0  # about ln(256) = 5.5 untrained


def test_datasets_are_verified_and_cached(tmp_path: Path) -> None:
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"hello corpus\n" * 100)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cached = fetch_dataset(
        DatasetSpec(url=source.as_uri(), sha256=digest), tmp_path / "data", show_progress=False
    )
    assert cached.read_bytes() == source.read_bytes()
    source.write_bytes(b"changed")  # the cache is used, not the changed source
    assert (
        fetch_dataset(DatasetSpec(url=str(source), sha256=digest), tmp_path / "data")
        .read_bytes()
        .startswith(b"hello")
    )


def test_a_wrong_sha256_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"some text")
    with pytest.raises(DatasetError, match="expects"):
        fetch_dataset(DatasetSpec(url=str(source), sha256="0" * 64), tmp_path / "data", show_progress=False)
    assert list((tmp_path / "data" / "datasets").iterdir()) == []
