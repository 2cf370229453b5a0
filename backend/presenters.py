"""Turning rows into what the outside sees: public run views, the join command, the manifest."""

from __future__ import annotations

import base64
from typing import Any

from backend.markdown import render_markdown
from backend.models import AuthMode, Run, RunDataset
from backend.schemas import DatasetPublic, Recipe, RunPublic, RunSummary
from peer.runs.manifest import MANIFEST_PROTOCOL_VERSION  # the peer owns the manifest format


def run_url(run: Run, public_url: str) -> str:
    return f"{public_url}/runs/{run.slug}"


def join_command(run: Run, public_url: str) -> str:
    return f"hivemind-peer join {run_url(run, public_url)}"


def authority_public_key_text(run: Run) -> str:
    return base64.b64encode(run.authority_key.public_key).decode() if run.authority_key else ""


def dataset_public(dataset: RunDataset | None, run: Run, public_url: str) -> DatasetPublic | None:
    if dataset is None:
        return None
    url = dataset.url if dataset.kind == "url" else f"{run_url(run, public_url)}/dataset"
    return DatasetPublic(
        kind=dataset.kind,  # type: ignore[arg-type]
        url=url or "",
        sha256=dataset.sha256,
        format=dataset.format,
        size_bytes=dataset.size_bytes,
        filename=dataset.filename,
    )


def run_summary(run: Run, public_url: str) -> RunSummary:
    return RunSummary(
        slug=run.slug,
        name=run.name,
        status=run.status,  # type: ignore[arg-type]
        owner=run.owner.username,
        auth_mode=run.auth_mode,  # type: ignore[arg-type]
        url=run_url(run, public_url),
        created_at=run.created_at,
    )


def run_public(run: Run, public_url: str) -> RunPublic:
    return RunPublic(
        **run_summary(run, public_url).model_dump(),
        description=run.description,
        description_html=render_markdown(run.description),
        recipe=Recipe(name=run.recipe_name, config=run.recipe_config),
        target_batch_size=run.target_batch_size,
        optimizer=run.optimizer,
        averaging=run.averaging,
        compression=run.compression,
        initial_peers=run.initial_peers,
        dataset=dataset_public(run.dataset, run, public_url),
        join_command=join_command(run, public_url),
        manifest_url=f"{public_url}/api/v1/runs/{run.slug}/manifest",
        authority_public_key=authority_public_key_text(run),
    )


def manifest(run: Run, public_url: str) -> dict[str, Any]:
    """The run manifest of DESIGN.md: declarative, so a peer never runs code the site sends."""
    dataset = dataset_public(run.dataset, run, public_url)
    needs_token = run.auth_mode != AuthMode.open.value
    return {
        "slug": run.slug,
        "name": run.name,
        "protocol_version": MANIFEST_PROTOCOL_VERSION,
        "status": run.status,
        "recipe": {"name": run.recipe_name, "config": run.recipe_config},
        "dataset": (
            {"url": dataset.url, "sha256": dataset.sha256, "format": dataset.format} if dataset else None
        ),
        "target_batch_size": run.target_batch_size,
        "optimizer": run.optimizer,
        "averaging": run.averaging,
        "compression": run.compression,
        "initial_peers": run.initial_peers,
        "auth": {
            "mode": "token" if needs_token else "open",
            "authority_public_key": authority_public_key_text(run),
            "token_url": f"{public_url}/api/v1/runs/{run.slug}/access-tokens",
        },
    }
