"""Reading what the swarm monitor stored: the live view of a run, its peers, its time series, its
experts and the totals of many runs. The REST API, the live WebSocket and the pages call these.

`run_live_view(session, run)` is the whole live view (the WebSocket's message, and what the run page
renders without JS); `runs_totals(session, runs)` gives one `RunTotals` per run for lists of runs.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from backend.models import LeaderboardEntry, MonitorStatus, Run, SwarmExpert, SwarmPeer, SwarmPoint
from backend.presenters import live_summary, metric_point, swarm_peer_public
from backend.schemas import (
    ExpertPublic,
    ExpertsPublic,
    LiveUpdate,
    MetricPoint,
    RunTotals,
    SwarmPeerPublic,
)
from backend.services.leaderboard import leaderboard
from peer.errors import PeerError
from peer.runs.recipes import get_recipe

logger = logging.getLogger(__name__)

MAX_POINTS = 10_000  # per request of the time series
LIVE_PEERS = 200  # peers in a live update
LIVE_LEADERBOARD = 20


def expert_grid(recipe_name: str, recipe_config: dict[str, Any]) -> tuple[str, ...]:
    """Every expert uid of a run's Mixture-of-Experts grid (`Recipe.expert_uids()`); empty for a dense
    recipe, and for a recipe this site does not have (the monitor then shows no experts)."""
    return _expert_grid(recipe_name, json.dumps(recipe_config, sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)
def _expert_grid(recipe_name: str, config_json: str) -> tuple[str, ...]:
    try:
        return tuple(get_recipe(recipe_name, json.loads(config_json)).expert_uids())
    except (PeerError, ValueError) as e:
        logger.warning("No expert grid for recipe %r: %s", recipe_name, e)
        return ()


def get_status(session: Session, *, run: Run) -> MonitorStatus | None:
    return session.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run.id))


def status_version(session: Session, *, run_id: int) -> int:
    """The run's stored-state version: it grows with every poll the monitor stores (0: none yet)."""
    return session.scalar(select(MonitorStatus.version).where(MonitorStatus.run_id == run_id)) or 0


def list_peers(
    session: Session, *, run: Run, limit: int = 100, offset: int = 0, online_only: bool = False
) -> tuple[list[SwarmPeerPublic], int]:
    """The run's peers, online first, then the most recently seen."""
    base = select(SwarmPeer).where(SwarmPeer.run_id == run.id)
    if online_only:
        base = base.where(SwarmPeer.online)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = session.scalars(
        base.options(selectinload(SwarmPeer.user))
        .order_by(SwarmPeer.online.desc(), SwarmPeer.last_seen.desc(), SwarmPeer.id)
        .limit(limit)
        .offset(offset)
    )
    return [swarm_peer_public(row) for row in rows], total


def metrics_since(
    session: Session, *, run: Run, since: float, limit: int = MAX_POINTS
) -> tuple[list[MetricPoint], bool]:
    """The run's points with t > `since`, oldest first, at most `limit`; True when more follow."""
    if not 1 <= limit <= MAX_POINTS:
        raise ValueError(f"limit must be between 1 and {MAX_POINTS}")
    rows = session.scalars(
        select(SwarmPoint)
        .where(SwarmPoint.run_id == run.id, SwarmPoint.t > since)
        .order_by(SwarmPoint.t, SwarmPoint.id)
        .limit(limit + 1)
    ).all()
    return [metric_point(row) for row in rows[:limit]], len(rows) > limit


def latest_point(session: Session, *, run_id: int) -> MetricPoint | None:
    row = session.scalar(
        select(SwarmPoint).where(SwarmPoint.run_id == run_id).order_by(SwarmPoint.t.desc()).limit(1)
    )
    return metric_point(row) if row is not None else None


def experts_view(session: Session, *, run: Run) -> ExpertsPublic:
    """Every expert of the run's grid, live or not, and who serves it; empty for a dense run."""
    stored = {
        row.uid: row for row in session.scalars(select(SwarmExpert).where(SwarmExpert.run_id == run.id))
    }
    grid = expert_grid(run.recipe_name, run.recipe_config)
    uids = list(grid) + sorted(uid for uid in stored if uid not in set(grid))
    items = []
    for uid in uids:
        row = stored.get(uid)
        items.append(
            ExpertPublic(
                uid=uid,
                live=bool(row and row.live),
                peer_id=row.peer_id if row else None,
                replicas=row.replicas if row and row.live else 0,
                last_seen=row.last_seen if row else None,
            )
        )
    return ExpertsPublic(items=items, total=len(items), live=sum(item.live for item in items))


def run_live_view(session: Session, *, run: Run, half_life_s: float, now: float | None = None) -> LiveUpdate:
    """The whole live view of a run: the summary, the newest point, the peers and the top 20."""
    status = get_status(session, run=run)
    peers, _ = list_peers(session, run=run, limit=LIVE_PEERS)
    top, _ = leaderboard(session, run=run, half_life_s=half_life_s, limit=LIVE_LEADERBOARD, now=now)
    return LiveUpdate(
        run=run.slug,
        version=status.version if status else 0,
        summary=live_summary(status),
        point=latest_point(session, run_id=run.id),
        peers=peers,
        leaderboard=top,
    )


def runs_totals(session: Session, runs: Sequence[Run]) -> dict[int, RunTotals]:
    """Each run's totals (by run id): zeros for a run the monitor has not polled yet."""
    ids = [run.id for run in runs]
    if not ids:
        return {}
    statuses = {
        status.run_id: status
        for status in session.scalars(select(MonitorStatus).where(MonitorStatus.run_id.in_(ids)))
    }
    contributors = dict(
        session.execute(
            select(LeaderboardEntry.run_id, func.count())
            .where(LeaderboardEntry.run_id.in_(ids), LeaderboardEntry.samples > 0)
            .group_by(LeaderboardEntry.run_id)
        ).all()
    )
    totals = {}
    for run_id in ids:
        summary = live_summary(statuses.get(run_id))
        totals[run_id] = RunTotals(
            peers_online=summary.peers_online,
            samples_per_second=summary.samples_per_second,
            epoch=summary.epoch,
            loss=summary.loss,
            total_samples=summary.total_samples,
            contributors=int(contributors.get(run_id, 0)),
            updated_at=summary.updated_at,
        )
    return totals


def monitored_runs(session: Session) -> list[tuple[Run, MonitorStatus]]:
    """Every run the monitor has a status for, with it, by slug (for the Prometheus endpoint)."""
    rows = session.execute(
        select(Run, MonitorStatus).join(MonitorStatus, MonitorStatus.run_id == Run.id).order_by(Run.slug)
    ).all()
    return [(run, status) for run, status in rows]
