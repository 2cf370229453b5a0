"""Storing one reading of a run's swarm: the monitor's write path (keyword-only service functions).

`record_reading` runs the accounting of `backend.monitor.accounting` against the stored state and
writes, in the caller's transaction:

- nothing of a peer whose records hold numbers or text the columns cannot (an epoch beyond 32 bits,
  a count beyond 64 bits, a float that is not finite or a NUL): its sighting is dropped and counted
  as invalid, whatever schema its peer used, so one record never fails the poll for the others; the
  counters that only grow stop at their columns' limits;
- each peer's last state (`swarm_peers`): a peer is *seen* when one of its records was republished
  since the last reading (its expiration grew), and goes offline when it has not been seen for
  `offline_after_s`; time online accrues between sightings while it stays online;
- the leaderboard (`leaderboard_entries`): credit goes to the user the site issued the peer's first
  access token to (`token_issuances`), never to the username a peer declares; in open runs a peer
  without a token is credited under its PeerID; in token runs a peer the site never issued a token
  to is credited to nobody;
- one raw time-series point (`swarm_points`) and the run's `monitor_status` (its version grows, so
  the live WebSocket notices);
- for Mixture-of-Experts runs, which experts are declared and by whom (`swarm_experts`).

`record_failure` notes a failed poll (and, as a reading does, takes offline the peers not seen for
`offline_after_s`), `record_unwatched` a run the monitor stopped watching;
`backend.monitor.retention.downsample` bounds the history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.models import (
    LeaderboardEntry,
    MonitorStatus,
    SwarmExpert,
    SwarmPeer,
    SwarmPoint,
    TokenIssuance,
    User,
)
from backend.monitor.accounting import (
    Baseline,
    ClaimRules,
    SwarmHistory,
    SwarmSummary,
    capped_speed,
    check_record,
    judge_growth,
    robust_total,
    robust_totals_of_others,
    swarm_summary,
)
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.retention import RetentionPolicy, downsample
from backend.services.leaderboard import decayed
from peer.optim.progress import ProgressRecord

logger = logging.getLogger(__name__)

_IN_CHUNK = 500  # ids per IN (...) clause
MAX_ERROR_LENGTH = 2000
# what the columns hold: epochs and claim counts are Integer (32-bit on PostgreSQL), sample counts
# BigInteger; floats must be finite, and small enough that sums and means over peers stay finite
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_STORED_FLOAT = 1e300
PEER_TEXT_LENGTHS = {"version": 64, "device": 64, "reachability": 16, "username": 64}  # PeerRecord -> column


@dataclass(frozen=True)
class StoreOptions:
    offline_after_s: float = 30.0
    half_life_s: float = 7 * 24 * 3600.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    retention_period_s: float = 60.0  # downsample a run at most this often


@dataclass(frozen=True)
class RunAccounting:
    """What the write path needs to know about a run."""

    run_id: int
    rules: ClaimRules
    credit_peers: bool  # open run: peers without a token are credited under their PeerID


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def get_status(session: Session, *, run_id: int) -> MonitorStatus:
    status = session.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run_id))
    if status is None:
        status = MonitorStatus(run_id=run_id)
        session.add(status)
        session.flush()
    return status


def record_failure(
    session: Session, *, run_id: int, error: str, now: float, options: StoreOptions | None = None
) -> None:
    """A poll of the run failed: count it and keep the message (the lag grows by itself). Nobody was
    seen, so the peers not seen for `offline_after_s` go offline, as after a reading; when none is
    left online, the live summary goes quiet."""
    options = options if options is not None else StoreOptions()
    status = get_status(session, run_id=run_id)
    status.errors += 1
    status.last_error = error[:MAX_ERROR_LENGTH]
    status.last_poll_at = now
    rows = _peer_rows(session, run_id, [], now).values()
    _go_offline(rows, now, options.offline_after_s)
    online = sum(row.online for row in rows)
    if online != status.peers_online:
        status.version += 1
        status.peers_online = online
        if not online:
            status.samples_per_second, status.eta_s = 0.0, None
        status.updated_at = to_datetime(now)
    session.flush()


def record_unwatched(session: Session, *, run_id: int, now: float) -> None:
    """The monitor stopped watching the run (paused, archived, or its swarm changed): nobody is known to
    be online any more, so its peers go offline and its live summary goes quiet."""
    session.execute(
        update(SwarmPeer).where(SwarmPeer.run_id == run_id, SwarmPeer.online).values(online=False)
    )
    status = session.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run_id))
    if status is not None:
        status.version += 1
        status.peers_online, status.samples_per_second, status.eta_s = 0, 0.0, None
        status.updated_at = to_datetime(now)
    session.flush()


def record_reading(
    session: Session, *, run: RunAccounting, reading: SwarmReading, options: StoreOptions
) -> MonitorStatus:
    """Store one reading (see the module docstring); returns the run's updated status."""
    reading = _drop_unstorable(reading, run.run_id)
    now = reading.time
    status = get_status(session, run_id=run.run_id)
    history = SwarmHistory(
        epoch=status.epoch,
        samples_per_second=status.samples_per_second,
        peers=status.peers_online,
        at=status.last_success_at,
    )
    rows = _peer_rows(session, run.run_id, list(reading.peers), now)
    declared = {peer_id: s.info.username for peer_id, s in reading.peers.items() if s.info is not None}
    _resolve_users(session, run, [row for row in rows.values() if row.user_id is None], declared)
    entries = _entries(session, run, [rows[peer_id] for peer_id in reading.peers], now)
    seen = [
        peer_id
        for peer_id, sighting in reading.peers.items()
        if _see(rows[peer_id], _entry(entries, rows[peer_id], run), sighting, now, options)
    ]
    _go_offline(rows.values(), now, options.offline_after_s)
    claims = {  # S_now: what every online peer claims now, each capped by rule 1
        peer_id: capped_speed(sighting.progress, run.rules)
        for peer_id, sighting in reading.peers.items()
        if sighting.progress is not None and rows[peer_id].online
    }
    swarm_speed = robust_total(claims.values())
    reasons = {
        peer_id: check_record(progress, history, run.rules, now, swarm_speed)
        for peer_id in seen
        if (progress := reading.peers[peer_id].progress) is not None
    }
    first = _summary(reading, rows, reasons, run.rules, now)
    poll = _Poll(
        epoch_now=first.epoch if first.peers else status.epoch, rules=run.rules, now=now, options=options
    )
    credited = flagged = 0
    others_speed = robust_totals_of_others(claims)  # S_others of each peer
    for peer_id, reason in reasons.items():
        row = rows[peer_id]
        others = others_speed.get(peer_id, robust_total(claims.values()))
        credited += _credit(
            row, _entry(entries, row, run), reading.peers[peer_id].progress, reason, others, poll
        )
        flagged += int(row.flagged)
    summary = _summary(reading, rows, {}, run.rules, now)
    _write_status(status, reading, summary, sum(row.online for row in rows.values()), credited, flagged)
    session.add(_point(run.run_id, now, status))
    if reading.experts is not None:
        _store_experts(session, run.run_id, reading.experts, now)
    if now - status.retention_at >= options.retention_period_s:
        downsample(session, run_id=run.run_id, now=now, policy=options.retention)
        status.retention_at = now
    session.flush()
    return status


def _drop_unstorable(reading: SwarmReading, run_id: int) -> SwarmReading:
    """The reading without the sightings the columns cannot hold, which count as invalid records."""
    kept = {peer_id: sighting for peer_id, sighting in reading.peers.items() if _storable(sighting)}
    if len(kept) == len(reading.peers):
        return reading
    for peer_id in reading.peers.keys() - kept.keys():
        logger.warning("Run %d: dropped the records of peer %s, whose values do not fit", run_id, peer_id)
    dropped = len(reading.peers) - len(kept)
    return replace(reading, peers=kept, invalid_records=reading.invalid_records + dropped)


def _storable(sighting: PeerSighting) -> bool:
    """Whether every value of the sighting fits its column (see `INT32_MAX` and the others)."""
    progress, info = sighting.progress, sighting.info
    floats = [sighting.expiration]
    if progress is not None:
        if not (0 <= progress.epoch <= INT32_MAX):
            return False
        if not (0 <= progress.total_samples <= INT64_MAX and 0 <= progress.samples_accumulated <= INT64_MAX):
            return False
        floats += [progress.samples_per_second, progress.time]
        floats += [progress.loss] if progress.loss is not None else []
    if not all(math.isfinite(value) and abs(value) <= MAX_STORED_FLOAT for value in floats):
        return False
    if info is not None:
        for name, length in PEER_TEXT_LENGTHS.items():
            text = getattr(info, name)
            if text is not None and (len(text) > length or "\x00" in text):
                return False
    return True


def _go_offline(rows: Iterable[SwarmPeer], now: float, offline_after_s: float) -> None:
    """Peers not seen for `offline_after_s` go offline."""
    for row in rows:
        if row.online and now - row.last_seen.timestamp() > offline_after_s:
            row.online = False


def _grown(counter: int, amount: int, limit: int = INT64_MAX) -> int:
    """A counter that only grows, stopped at its column's limit."""
    return min(counter + amount, limit)


def _chunks(items: list, size: int = _IN_CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _peer_rows(session: Session, run_id: int, observed: list[str], now: float) -> dict[str, SwarmPeer]:
    """The rows of the observed peers (created for newcomers) and of every peer online until now."""
    rows = {
        row.peer_id: row
        for row in session.scalars(select(SwarmPeer).where(SwarmPeer.run_id == run_id, SwarmPeer.online))
    }
    missing = [peer_id for peer_id in observed if peer_id not in rows]
    for chunk in _chunks(missing):
        for row in session.scalars(
            select(SwarmPeer).where(SwarmPeer.run_id == run_id, SwarmPeer.peer_id.in_(chunk))
        ):
            rows[row.peer_id] = row
    for peer_id in observed:
        if peer_id not in rows:
            when = to_datetime(now)
            rows[peer_id] = SwarmPeer(
                run_id=run_id, peer_id=peer_id, first_seen=when, last_seen=when, online=False
            )
            session.add(rows[peer_id])
    session.flush()  # the new rows get their column defaults
    return rows


def _resolve_users(
    session: Session, run: RunAccounting, rows: list[SwarmPeer], declared: Mapping[str, str | None]
) -> None:
    """Credit each peer to the user the site first issued a token for this run and PeerID to. On a
    token run that is the peer's owner: it needed the token to join, before its PeerID was public. On
    an open run anyone may ask for a token for a PeerID seen in the DHT, so the issuance counts only
    if the peer itself names that user in its signed `<run>_peers` record (`declared`, else what it
    named before); a peer that names nobody stays credited under its PeerID."""
    by_peer = {row.peer_id: row for row in rows}
    for chunk in _chunks(list(by_peer)):
        issuances = session.execute(
            select(TokenIssuance.peer_id, TokenIssuance.user_id, User.username)
            .join(User, User.id == TokenIssuance.user_id)
            .where(TokenIssuance.run_id == run.run_id, TokenIssuance.peer_id.in_(chunk))
            .order_by(TokenIssuance.issued_at, TokenIssuance.id)
        )
        for peer_id, user_id, username in issuances:
            row = by_peer[peer_id]
            if row.user_id is not None:
                continue
            named = declared.get(peer_id) or row.declared_username
            if not run.credit_peers or named == username:
                row.user_id = user_id


def _credit_key(row: SwarmPeer, run: RunAccounting) -> str | None:
    if row.user_id is not None:
        return f"user:{row.user_id}"
    return f"peer:{row.peer_id}" if run.credit_peers else None


def _entry(
    entries: dict[str, LeaderboardEntry], row: SwarmPeer, run: RunAccounting
) -> LeaderboardEntry | None:
    key = _credit_key(row, run)
    return entries.get(key) if key is not None else None


def _entries(
    session: Session, run: RunAccounting, rows: list[SwarmPeer], now: float
) -> dict[str, LeaderboardEntry]:
    """The leaderboard rows the peers credit (created when new)."""
    keys = {key: row for row in rows if (key := _credit_key(row, run)) is not None}
    entries: dict[str, LeaderboardEntry] = {}
    for chunk in _chunks(list(keys)):
        for entry in session.scalars(
            select(LeaderboardEntry).where(
                LeaderboardEntry.run_id == run.run_id, LeaderboardEntry.credit_key.in_(chunk)
            )
        ):
            entries[entry.credit_key] = entry
    for key, row in keys.items():
        if key not in entries:
            entries[key] = LeaderboardEntry(
                run_id=run.run_id,
                credit_key=key,
                user_id=row.user_id,
                peer_id=None if row.user_id is not None else row.peer_id,
                samples=0,
                rejected_samples=0,
                flagged_claims=0,
                time_online_s=0.0,
                recent_score=0.0,
                score_at=now,
                updated_at=to_datetime(now),
            )
            session.add(entries[key])
    return entries


def _see(
    row: SwarmPeer, entry: LeaderboardEntry | None, sighting: PeerSighting, now: float, options: StoreOptions
) -> bool:
    """Update the row from the sighting; True when the peer republished since the last reading."""
    if sighting.info is not None:
        row.declared_username = sighting.info.username
        row.device, row.reachability, row.version = (
            sighting.info.device,
            sighting.info.reachability,
            sighting.info.version,
        )
    if sighting.expiration <= row.last_expiration:
        return False
    if row.online:  # online since the last sighting: that time counts
        elapsed = min(max(0.0, now - row.last_seen.timestamp()), options.offline_after_s)
        row.time_online_s += elapsed
        if entry is not None:
            entry.time_online_s += elapsed
            entry.updated_at = to_datetime(now)
    row.last_seen, row.online, row.last_expiration = to_datetime(now), True, sighting.expiration
    progress = sighting.progress
    if progress is not None:
        row.epoch, row.samples_per_second, row.loss = (
            progress.epoch,
            progress.samples_per_second,
            progress.loss,
        )
        row.total_samples, row.client_mode = progress.total_samples, progress.client_mode
    return True


@dataclass(frozen=True)
class _Poll:
    """What every peer's credit in one reading is judged against."""

    epoch_now: int
    rules: ClaimRules
    now: float
    options: StoreOptions


def _credit(
    row: SwarmPeer,
    entry: LeaderboardEntry | None,
    progress: ProgressRecord | None,
    reason: str | None,
    others_speed: float,
    poll: _Poll,
) -> int:
    """Judge the peer's new total against its baseline and credit it; returns the credited samples."""
    if progress is None:
        return 0
    now, options = poll.now, poll.options
    baseline = Baseline(row.baseline_total, row.baseline_epoch, row.baseline_at) if row.baseline_at else None
    verdict = judge_growth(
        progress,
        baseline,
        epoch_now=poll.epoch_now,
        rules=poll.rules,
        now=now,
        others_speed=others_speed,
        reason=reason,
    )
    row.baseline_total, row.baseline_epoch, row.baseline_at = (
        verdict.baseline.total,
        verdict.baseline.epoch,
        verdict.baseline.at,
    )
    row.credited_samples = _grown(row.credited_samples, verdict.credited)
    row.rejected_samples = _grown(row.rejected_samples, verdict.rejected)
    row.flagged = verdict.reason is not None
    if verdict.reason is not None:
        row.flag_reason = verdict.reason[:200]
        row.flagged_claims = _grown(row.flagged_claims, 1, INT32_MAX)
    if entry is not None:
        entry.samples = _grown(entry.samples, verdict.credited)
        entry.rejected_samples = _grown(entry.rejected_samples, verdict.rejected)
        entry.flagged_claims = _grown(entry.flagged_claims, int(row.flagged), INT32_MAX)
        entry.recent_score = (
            decayed(entry.recent_score, entry.score_at, now, options.half_life_s) + verdict.credited
        )
        entry.score_at = now
        entry.updated_at = to_datetime(now)
    return verdict.credited


def _summary(
    reading: SwarmReading,
    rows: dict[str, SwarmPeer],
    reasons: dict[str, str | None],
    rules: ClaimRules,
    now: float,
) -> SwarmSummary:
    """The swarm from its trusted online peers: neither flagged now (`reasons`) nor still flagged."""
    trusted = {
        peer_id: sighting.progress
        for peer_id, sighting in reading.peers.items()
        if sighting.progress is not None
        and rows[peer_id].online
        and (reasons[peer_id] is None if peer_id in reasons else not rows[peer_id].flagged)
    }
    return swarm_summary(trusted, rules.target_batch_size, now)


def _write_status(
    status: MonitorStatus,
    reading: SwarmReading,
    summary: SwarmSummary,
    online: int,
    credited: int,
    flagged: int,
) -> None:
    status.version += 1
    status.polls += 1
    status.last_poll_at = status.last_success_at = reading.time
    status.poll_duration_s = reading.duration_s
    status.last_error = None
    status.invalid_records = _grown(status.invalid_records, reading.invalid_records)
    status.flagged_claims = _grown(status.flagged_claims, flagged)
    status.peers_online = online
    status.samples_per_second = summary.samples_per_second
    if summary.peers:  # nobody trusted online: keep the last epoch
        status.epoch = summary.epoch
    status.samples_accumulated = min(summary.samples_accumulated, INT64_MAX)
    status.eta_s = summary.eta_s
    status.loss = summary.loss if summary.loss is not None else status.loss
    status.total_samples = _grown(status.total_samples, credited)
    status.updated_at = to_datetime(reading.time)


def _point(run_id: int, now: float, status: MonitorStatus) -> SwarmPoint:
    return SwarmPoint(
        run_id=run_id,
        t=now,
        resolution_s=0,
        weight=1,
        peers=float(status.peers_online),
        samples_per_second=status.samples_per_second,
        epoch=status.epoch,
        loss=status.loss if status.peers_online else None,
        total_samples=status.total_samples,
    )


def _store_experts(session: Session, run_id: int, serving: dict[str, tuple[str, ...]], now: float) -> None:
    """Mark the declared experts live (with who serves them) and every other known one not live."""
    known = {row.uid: row for row in session.scalars(select(SwarmExpert).where(SwarmExpert.run_id == run_id))}
    when = to_datetime(now)
    for uid, servers in serving.items():
        row = known.get(uid)
        if row is None:
            row = SwarmExpert(run_id=run_id, uid=uid)
            session.add(row)
        row.peer_id, row.replicas, row.live, row.last_seen = servers[0], len(servers), True, when
    gone = [uid for uid, row in known.items() if row.live and uid not in serving]
    for chunk in _chunks(gone):
        session.execute(
            update(SwarmExpert)
            .where(SwarmExpert.run_id == run_id, SwarmExpert.uid.in_(chunk))
            .values(live=False)
        )
