"""Bounded history: old time-series points are merged into coarser ones.

With the default policy a run keeps its raw points (one per poll) for an hour, 1-minute means for a
day, 1-hour means for 30 days and 1-day means beyond, so a month-long run polled every 10 s holds
about 2,500 points instead of 260,000. Merging is exact where it matters: a merged point's
`total_samples` is the last one of its bucket (the counter is cumulative, so totals stay correct),
its epoch the highest, and peers, samples/s and loss are means weighted by how many raw points each
point stands for (`weight`).

`merge_points` and `buckets` are pure; `downsample` applies the policy to one run in the database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.models import SwarmPoint


@dataclass(frozen=True)
class RetentionTier:
    after_s: float  # points older than this...
    resolution_s: int  # ...are merged into buckets of this many seconds


@dataclass(frozen=True)
class RetentionPolicy:
    tiers: tuple[RetentionTier, ...] = (
        RetentionTier(3600, 60),
        RetentionTier(24 * 3600, 3600),
        RetentionTier(30 * 24 * 3600, 24 * 3600),
    )

    def __post_init__(self) -> None:
        previous = RetentionTier(0, 0)
        for tier in self.tiers:
            if tier.resolution_s <= previous.resolution_s or tier.after_s <= previous.after_s:
                raise ValueError("tiers must grow in both after_s and resolution_s")
            if tier.resolution_s > tier.after_s:
                raise ValueError("a tier's resolution_s must not exceed its after_s")
            previous = tier


@dataclass(frozen=True)
class PointValues:
    t: float
    resolution_s: int
    weight: int
    peers: float
    samples_per_second: float
    epoch: int
    loss: float | None
    total_samples: int

    @classmethod
    def of(cls, row: SwarmPoint) -> PointValues:
        return cls(
            row.t,
            row.resolution_s,
            row.weight,
            row.peers,
            row.samples_per_second,
            row.epoch,
            row.loss,
            row.total_samples,
        )


def merge_points(points: Sequence[PointValues], start: float, resolution_s: int) -> PointValues:
    """One point standing for `points` (see the module docstring), dated at its bucket's `start`."""
    if not points:
        raise ValueError("points must not be empty")
    weight = sum(point.weight for point in points)
    with_loss = [point for point in points if point.loss is not None]
    loss_weight = sum(point.weight for point in with_loss)
    last = max(points, key=lambda point: point.t)
    return PointValues(
        t=start,
        resolution_s=resolution_s,
        weight=weight,
        peers=sum(point.peers * point.weight for point in points) / weight,
        samples_per_second=sum(point.samples_per_second * point.weight for point in points) / weight,
        epoch=max(point.epoch for point in points),
        loss=(
            sum(point.loss * point.weight for point in with_loss if point.loss is not None) / loss_weight
            if loss_weight
            else None
        ),
        total_samples=last.total_samples,
    )


def bucket_start(t: float, resolution_s: int) -> float:
    return math.floor(t / resolution_s) * resolution_s


def downsample(session: Session, *, run_id: int, now: float, policy: RetentionPolicy) -> int:
    """Merge the run's points that are old enough, tier by tier; returns how many rows went away."""
    removed = 0
    for tier in policy.tiers:
        cutoff = bucket_start(now - tier.after_s, tier.resolution_s)  # only whole buckets are merged
        rows = session.scalars(
            select(SwarmPoint)
            .where(
                SwarmPoint.run_id == run_id,
                SwarmPoint.resolution_s < tier.resolution_s,
                SwarmPoint.t < cutoff,
            )
            .order_by(SwarmPoint.t)
        ).all()
        if not rows:
            continue
        by_bucket: dict[float, list[SwarmPoint]] = defaultdict(list)
        for row in rows:
            by_bucket[bucket_start(row.t, tier.resolution_s)].append(row)
        session.execute(delete(SwarmPoint).where(SwarmPoint.id.in_([row.id for row in rows])))
        for start, members in by_bucket.items():
            merged = merge_points([PointValues.of(row) for row in members], start, tier.resolution_s)
            session.add(SwarmPoint(run_id=run_id, **merged.__dict__))
        removed += len(rows) - len(by_bucket)
    session.flush()
    return removed
