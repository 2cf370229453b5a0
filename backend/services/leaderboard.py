"""Reading a run's leaderboard (the monitor writes it: `backend.monitor.store`).

Each row is one contributor: a user (credited through the access tokens the site issued to their
peers) or, in open runs, a peer without a token. Rows are ranked by credited samples, by the recent
score, or by time online.

The recent score works like BOINC's recent average credit: every credit adds to a score that decays
exponentially with the half-life H (setting `leaderboard_half_life_s`), score(t) = sum of c_i x
2^(-(t - t_i) / H). Each row stores its score as of `score_at`; `decayed` brings it to now.
"""

from __future__ import annotations

import enum
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from backend.models import LeaderboardEntry, Run
from backend.presenters import leaderboard_row
from backend.schemas import LeaderboardRow


def decayed(score: float, since: float, now: float, half_life_s: float) -> float:
    """`score` (as of `since`) decayed to `now` with half-life `half_life_s`."""
    if half_life_s <= 0:
        raise ValueError("half_life_s must be positive")
    return score * 2.0 ** (-max(0.0, now - since) / half_life_s)


class LeaderboardOrder(str, enum.Enum):
    samples = "samples"
    recent = "recent"
    time_online = "time_online"


def leaderboard(
    session: Session,
    *,
    run: Run,
    half_life_s: float,
    limit: int = 20,
    offset: int = 0,
    order: LeaderboardOrder = LeaderboardOrder.samples,
    now: float | None = None,
) -> tuple[list[LeaderboardRow], int]:
    """One page of the run's leaderboard, ranked by `order`, and how many contributors there are."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be at least 1 and offset at least 0")
    now = time.time() if now is None else now
    base = select(LeaderboardEntry).where(LeaderboardEntry.run_id == run.id)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    query = base.options(selectinload(LeaderboardEntry.user))
    if order == LeaderboardOrder.recent:  # the score decays from each row's own time: rank in Python
        entries = list(session.scalars(query))
        entries.sort(key=lambda entry: (-_score(entry, now, half_life_s), -entry.samples, entry.id))
        entries = entries[offset : offset + limit]
    else:
        column = (
            LeaderboardEntry.samples if order == LeaderboardOrder.samples else LeaderboardEntry.time_online_s
        )
        query = query.order_by(column.desc(), LeaderboardEntry.samples.desc(), LeaderboardEntry.id)
        entries = list(session.scalars(query.limit(limit).offset(offset)))
    rows = [
        leaderboard_row(entry, rank=offset + index + 1, recent_score=_score(entry, now, half_life_s))
        for index, entry in enumerate(entries)
    ]
    return rows, total


def _score(entry: LeaderboardEntry, now: float, half_life_s: float) -> float:
    return decayed(entry.recent_score, entry.score_at, now, half_life_s)
