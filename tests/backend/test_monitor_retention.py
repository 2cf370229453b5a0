"""Retention: downsampling keeps a run's history bounded, and its totals and means correct."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select

from backend.models import Run, SwarmPoint
from backend.monitor.retention import RetentionPolicy, downsample

HOUR, DAY = 3600, 24 * 3600
NOW = 1_800_000_000.0  # 08:00 UTC: the history below spans four calendar days


def _history(run_id: int) -> list[dict]:
    """Three days of a run: a point every 5 minutes, then every 10 s for the last three hours."""
    times = [NOW - 3 * DAY + i * 300 for i in range(int((3 * DAY - 3 * HOUR) / 300))]
    times += [NOW - 3 * HOUR + i * 10 for i in range(3 * HOUR // 10)]
    return [
        {
            "run_id": run_id,
            "t": t,
            "resolution_s": 0,
            "weight": 1,
            "peers": float(2 + i % 3),
            "samples_per_second": float(i % 7),
            "epoch": i // 50,
            "loss": None if i % 5 == 0 else 1.0 / (i + 1),
            "total_samples": 10 * i,
        }
        for i, t in enumerate(times)
    ]


def _rows(db, run_id: int) -> list[SwarmPoint]:
    return list(db.scalars(select(SwarmPoint).where(SwarmPoint.run_id == run_id).order_by(SwarmPoint.t)))


def _weighted(rows, attribute: str) -> float:
    return sum(getattr(row, attribute) * row.weight for row in rows) / sum(row.weight for row in rows)


def test_downsampling_bounds_the_rows_and_keeps_totals_and_means(db, run):
    run_id = db.scalar(select(Run.id).where(Run.slug == run["slug"]))
    raw = _history(run_id)
    db.execute(insert(SwarmPoint), raw)
    mean_speed = sum(point["samples_per_second"] for point in raw) / len(raw)
    mean_peers = sum(point["peers"] for point in raw) / len(raw)

    removed = downsample(db, run_id=run_id, now=NOW, policy=RetentionPolicy())
    rows = _rows(db, run_id)
    # raw for the last hour (360), 1-minute buckets back to a day ago (120 from the 10-s part, 252
    # 5-minute points), 1-hour buckets before that (48)
    assert len(rows) == 360 + 120 + 252 + 48 and removed == len(raw) - len(rows)
    assert sum(row.weight for row in rows) == len(raw)  # every raw point is still accounted for
    assert rows[-1].total_samples == raw[-1]["total_samples"]  # the cumulative total is exact
    assert [row.total_samples for row in rows] == sorted(row.total_samples for row in rows)
    assert _weighted(rows, "samples_per_second") == pytest.approx(mean_speed)
    assert _weighted(rows, "peers") == pytest.approx(mean_peers)
    assert max(row.epoch for row in rows) == raw[-1]["epoch"]
    resolutions = {row.resolution_s for row in rows if row.t < NOW - DAY}
    assert resolutions == {3600}
    assert {row.resolution_s for row in rows if row.t >= NOW - HOUR} == {0}

    assert downsample(db, run_id=run_id, now=NOW, policy=RetentionPolicy()) == 0  # idempotent

    later = NOW + 40 * DAY  # the whole history is past 30 days now: one point per day
    downsample(db, run_id=run_id, now=later, policy=RetentionPolicy())
    rows = _rows(db, run_id)
    assert len(rows) == 4  # three days of history, starting at 08:00, touch four calendar days
    assert {row.resolution_s for row in rows} == {DAY}
    assert sum(row.weight for row in rows) == len(raw)
    assert rows[-1].total_samples == raw[-1]["total_samples"]
    assert _weighted(rows, "samples_per_second") == pytest.approx(mean_speed)
    count = db.scalar(select(func.count()).select_from(SwarmPoint).where(SwarmPoint.run_id == run_id))
    assert count == len(rows)
