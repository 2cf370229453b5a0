"""Reading what the swarm monitor stored: the live view of a run, its peers, its time series, its
experts and the totals of many runs. The REST API, the live WebSocket and the pages call these.

`run_live_view(session, run)` is the whole live view (the WebSocket's message, and what the run page
renders without JS); `runs_totals(session, runs)` gives one `RunTotals` per run for lists of runs.

A run's peers, leaderboard, time series and experts are read once per stored poll and shared by
every request until the next one (`backend.services.snapshots`): a request costs one small query for
the run's version, then slices what is already there.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from backend.services.leaderboard import LeaderboardOrder, rank_page
from backend.services.snapshots import RunSnapshot, run_snapshot
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


@dataclass(frozen=True)
class _Peers:
    items: list[SwarmPeerPublic]  # online first, then the most recently seen
    online: int  # the first `online` items are the online peers


def _load_peers(session: Session, run_id: int) -> _Peers:
    rows = session.scalars(
        select(SwarmPeer)
        .where(SwarmPeer.run_id == run_id)
        .options(selectinload(SwarmPeer.user))
        .order_by(SwarmPeer.online.desc(), SwarmPeer.last_seen.desc(), SwarmPeer.id)
    )
    items = [swarm_peer_public(row) for row in rows]
    return _Peers(items, sum(item.online for item in items))


def _peers(snapshot: RunSnapshot, session: Session, run_id: int) -> _Peers:
    return snapshot.part("peers", lambda: _load_peers(session, run_id))


def list_peers(
    session: Session, *, run: Run, limit: int = 100, offset: int = 0, online_only: bool = False
) -> tuple[list[SwarmPeerPublic], int]:
    """The run's peers, online first, then the most recently seen."""
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    peers = _peers(run_snapshot(session, run.id), session, run.id)
    chosen = peers.items[: peers.online] if online_only else peers.items
    return chosen[offset : offset + limit], len(chosen)


@dataclass(frozen=True)
class _Points:
    times: list[float]  # t of each point, for bisecting
    points: list[MetricPoint]  # oldest first


_POINT_COLUMNS = [getattr(SwarmPoint, name) for name in MetricPoint.model_fields]


def _load_points(session: Session, run_id: int) -> _Points:
    rows = session.execute(
        select(*_POINT_COLUMNS).where(SwarmPoint.run_id == run_id).order_by(SwarmPoint.t, SwarmPoint.id)
    )
    points = [MetricPoint(**row._mapping) for row in rows]
    return _Points([point.t for point in points], points)


def metrics_since(
    session: Session, *, run: Run, since: float, limit: int = MAX_POINTS
) -> tuple[list[MetricPoint], bool]:
    """The run's points with t > `since`, oldest first, at most `limit`; True when more follow."""
    if not 1 <= limit <= MAX_POINTS:
        raise ValueError(f"limit must be between 1 and {MAX_POINTS}")
    stored = run_snapshot(session, run.id).part("points", lambda: _load_points(session, run.id))
    start = bisect.bisect_right(stored.times, since)
    return stored.points[start : start + limit], len(stored.points) - start > limit


def latest_point(session: Session, *, run_id: int) -> MetricPoint | None:
    row = session.scalar(
        select(SwarmPoint).where(SwarmPoint.run_id == run_id).order_by(SwarmPoint.t.desc()).limit(1)
    )
    return metric_point(row) if row is not None else None


def _load_experts(session: Session, run: Run) -> ExpertsPublic:
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


def experts_view(session: Session, *, run: Run) -> ExpertsPublic:
    """Every expert of the run's grid, live or not, and who serves it; empty for a dense run."""
    recipe = (run.recipe_name, json.dumps(run.recipe_config, sort_keys=True, default=str))
    return run_snapshot(session, run.id).part(("experts", recipe), lambda: _load_experts(session, run))


def run_live_view(session: Session, *, run: Run, half_life_s: float, now: float | None = None) -> LiveUpdate:
    """The whole live view of a run: the summary, the newest point, the peers and the top 20."""
    snapshot = run_snapshot(session, run.id)
    summary, point = snapshot.part(
        "live",
        lambda: (live_summary(get_status(session, run=run)), latest_point(session, run_id=run.id)),
    )
    top, _ = rank_page(
        snapshot,
        session,
        run_id=run.id,
        half_life_s=half_life_s,
        limit=LIVE_LEADERBOARD,
        offset=0,
        order=LeaderboardOrder.samples,
        now=time.time() if now is None else now,
    )
    return LiveUpdate(
        run=run.slug,
        version=snapshot.version,
        summary=summary,
        point=point,
        peers=_peers(snapshot, session, run.id).items[:LIVE_PEERS],
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
