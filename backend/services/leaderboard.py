"""Reading a run's leaderboard (the monitor writes it: `backend.monitor.store`).

Each row is one contributor: a user (credited through the access tokens the site issued to their
peers) or, in open runs, a peer without a token. Rows are ranked by credited samples, by the recent
score, or by time online.

The recent score works like BOINC's recent average credit: every credit adds to a score that decays
exponentially with the half-life H (setting `leaderboard_half_life_s`), score(t) = sum of c_i x
2^(-(t - t_i) / H). Each row stores its score as of `score_at`; `decayed` brings it to now.

The rows are read once per stored poll (`backend.services.snapshots`) and ranked for each request;
the recent score is decayed to the moment of the request.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from backend.models import LeaderboardEntry, Run
from backend.presenters import leaderboard_row
from backend.schemas import LeaderboardRow
from backend.services.snapshots import RunSnapshot, run_snapshot


def decayed(score: float, since: float, now: float, half_life_s: float) -> float:
    """`score` (as of `since`) decayed to `now` with half-life `half_life_s`."""
    if half_life_s <= 0:
        raise ValueError("half_life_s must be positive")
    return score * 2.0 ** (-max(0.0, now - since) / half_life_s)


class LeaderboardOrder(str, enum.Enum):
    samples = "samples"
    recent = "recent"
    time_online = "time_online"


@dataclass(frozen=True)
class Contributor:
    """One stored leaderboard row: its public row (rank and score still to set) and what ranks it."""

    row: LeaderboardRow
    entry_id: int
    samples: int
    time_online_s: float
    score: float  # the recent score as of `score_at`
    score_at: float

    def recent_score(self, now: float, half_life_s: float) -> float:
        return decayed(self.score, self.score_at, now, half_life_s)


def load_contributors(session: Session, *, run_id: int) -> list[Contributor]:
    """Every leaderboard row of the run, by id."""
    entries = session.scalars(
        select(LeaderboardEntry)
        .where(LeaderboardEntry.run_id == run_id)
        .options(selectinload(LeaderboardEntry.user))
        .order_by(LeaderboardEntry.id)
    )
    return [
        Contributor(
            row=leaderboard_row(entry, rank=0, recent_score=entry.recent_score),
            entry_id=entry.id,
            samples=entry.samples,
            time_online_s=entry.time_online_s,
            score=entry.recent_score,
            score_at=entry.score_at,
        )
        for entry in entries
    ]


_ORDER_KEYS = {  # how `samples` and `time_online` rank (fixed until the next poll, unlike `recent`)
    LeaderboardOrder.samples: lambda c: (-c.samples, c.entry_id),
    LeaderboardOrder.time_online: lambda c: (-c.time_online_s, -c.samples, c.entry_id),
}


def _contributors(snapshot: RunSnapshot, session: Session, run_id: int) -> list[Contributor]:
    return snapshot.part("leaderboard", lambda: load_contributors(session, run_id=run_id))


def rank_page(
    snapshot: RunSnapshot,
    session: Session,
    *,
    run_id: int,
    half_life_s: float,
    limit: int,
    offset: int,
    order: LeaderboardOrder,
    now: float,
) -> tuple[list[LeaderboardRow], int]:
    """One page of the run's leaderboard from `snapshot` (see `leaderboard`)."""
    if order == LeaderboardOrder.recent:  # the score decays from each row's own time: rank at `now`
        ranked = sorted(
            _contributors(snapshot, session, run_id),
            key=lambda c: (-c.recent_score(now, half_life_s), -c.samples, c.entry_id),
        )
    else:
        key = _ORDER_KEYS[order]
        ranked = snapshot.part(
            ("leaderboard", order.value), lambda: sorted(_contributors(snapshot, session, run_id), key=key)
        )
    rows = [
        contributor.row.model_copy(
            update={"rank": offset + index + 1, "recent_score": contributor.recent_score(now, half_life_s)}
        )
        for index, contributor in enumerate(ranked[offset : offset + limit])
    ]
    return rows, len(ranked)


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
    if half_life_s <= 0:
        raise ValueError("half_life_s must be positive")
    return rank_page(
        run_snapshot(session, run.id),
        session,
        run_id=run.id,
        half_life_s=half_life_s,
        limit=limit,
        offset=offset,
        order=order,
        now=time.time() if now is None else now,
    )
