"""Turning rows into what the outside sees: public run views, the join command, the manifest, and
the swarm monitor's rows (peers, leaderboard rows, time-series points, the live summary)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from backend.markdown import render_markdown
from backend.models import AuthMode, LeaderboardEntry, MonitorStatus, Run, RunDataset, SwarmPeer, SwarmPoint
from backend.schemas import (
    DatasetPublic,
    LeaderboardRow,
    LiveSummary,
    MetricPoint,
    Recipe,
    RunPublic,
    RunSummary,
    SwarmPeerPublic,
)
from peer.runs.manifest import MANIFEST_PROTOCOL_VERSION  # the peer owns the manifest format

if TYPE_CHECKING:
    from backend.checkpoints.store import Checkpoint


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


def manifest(run: Run, public_url: str, initial_state: Checkpoint | None = None) -> dict[str, Any]:
    """The run manifest of DESIGN.md: declarative, so a peer never runs code the site sends.
    `initial_state` is the run's seed (an uploaded checkpoint) that fresh peers load, if it has one."""
    dataset = dataset_public(run.dataset, run, public_url)
    needs_token = run.auth_mode != AuthMode.open.value
    seed = None
    if initial_state is not None:
        url = f"{public_url}/api/v1/runs/{run.slug}/checkpoints/{initial_state.id}"
        seed = {"url": url, "sha256": initial_state.sha256}
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
        "initial_state": seed,
    }


def short_peer_id(peer_id: str) -> str:
    """`12D3KooW...` PeerIDs share their first characters: show the last ones."""
    return f"…{peer_id[-8:]}" if len(peer_id) > 12 else peer_id


def swarm_peer_public(row: SwarmPeer) -> SwarmPeerPublic:
    return SwarmPeerPublic(
        peer_id=row.peer_id,
        short_id=short_peer_id(row.peer_id),
        user=row.user.username if row.user is not None else None,
        declared_username=row.declared_username,
        device=row.device,
        reachability=row.reachability,
        version=row.version,
        client_mode=row.client_mode,
        epoch=row.epoch,
        samples_per_second=row.samples_per_second,
        loss=row.loss,
        total_samples=row.total_samples,
        credited_samples=row.credited_samples,
        time_online_s=row.time_online_s,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        online=row.online,
        flagged=row.flagged,
        flag_reason=row.flag_reason,
    )


def leaderboard_row(entry: LeaderboardEntry, *, rank: int, recent_score: float) -> LeaderboardRow:
    username = entry.user.username if entry.user is not None else None
    return LeaderboardRow(
        rank=rank,
        name=username or short_peer_id(entry.peer_id or ""),
        user=username,
        peer_id=entry.peer_id,
        samples=entry.samples,
        time_online_s=entry.time_online_s,
        recent_score=recent_score,
        rejected_samples=entry.rejected_samples,
        flagged_claims=entry.flagged_claims,
        updated_at=entry.updated_at,
    )


def metric_point(row: SwarmPoint) -> MetricPoint:
    return MetricPoint(
        t=row.t,
        peers=row.peers,
        samples_per_second=row.samples_per_second,
        epoch=row.epoch,
        loss=row.loss,
        total_samples=row.total_samples,
        resolution_s=row.resolution_s,
    )


def live_summary(status: MonitorStatus | None) -> LiveSummary:
    if status is None:
        return LiveSummary(
            peers_online=0,
            samples_per_second=0.0,
            epoch=0,
            eta_s=None,
            loss=None,
            total_samples=0,
            updated_at=None,
        )
    return LiveSummary(
        peers_online=status.peers_online,
        samples_per_second=status.samples_per_second,
        epoch=status.epoch,
        eta_s=status.eta_s,
        loss=status.loss,
        total_samples=status.total_samples,
        updated_at=status.updated_at,
    )
