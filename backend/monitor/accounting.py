"""The leaderboard's accounting and the sanity checks on what peers claim (pure: no I/O, no clock).

**Credit.** A peer's credited samples are the increases of the cumulative `total_samples` in its
progress records, as the monitor observes them:

- its first sighting sets the baseline: work done before the monitor first saw the peer is not
  credited (it may have been credited already, under another PeerID with the same checkpoint);
- a counter that goes down means the peer restarted (from an older checkpoint, or none): the
  baseline moves down to it and nothing is credited for that reading;
- every plausible increase is credited and moves the baseline up.

**Sanity checks.** A claim that breaks a rule flags the peer for that reading: its increase is
rejected (counted as rejected and never credited, because the baseline moves past it) and its speed
leaves the swarm's totals. With the tolerance k (setting `sanity_tolerance`) and T the run's
`target_batch_size`:

1. absurd speed: `samples_per_second` > `max_samples_per_second` (a per-peer cap);
2. a record from the future: its `time` is more than `MAX_CLOCK_SKEW_S` ahead of the monitor;
3. an epoch far ahead of the swarm: epoch > E + `EPOCH_SLACK` + k x elapsed x max(S, S_now) / T,
   where E and S are the swarm's epoch and speed at the previous reading, `elapsed` the time since,
   and S_now the speed every online peer claims now, each capped by rule 1 (only when the previous
   reading is recent, within `window_s`, and saw peers online);
4. a speed beyond what the swarm shows: `samples_per_second` > k x ((dE + 1) x T / dt + S_others),
   where dE is the number of epochs the swarm advanced since the peer's baseline, dt seconds ago,
   and S_others the speed the *other* online peers claim now (only when dt is within `window_s`);
5. growth faster than the cap: the increase > `max_samples_per_second` x dt;
6. growth beyond what the swarm shows: the increase > k x ((dE + 1) x T + S_others x dt).

The S_others terms are there because an epoch is not exactly T samples: peers learn of each other's
samples only every progress period, so a fast swarm with a small T overshoots every epoch by about
S x progress period. A peer's own claims never loosen its own bounds in rules 4 and 6, and claimed
speeds are summed robustly (`robust_total`: the number of peers times their lower median claim), so
peers that vouch for each other with absurd speeds loosen nothing unless they are most of the swarm.
S_now is summed the same way.

Rules 1 to 3 judge a record on its own (and decide which peers the swarm's epoch and speed are
computed from); rules 4 to 6 judge it against the peer's baseline. Rules 3, 4 and 6 count in epochs
of T samples. In DiLoCo runs (`averaging.local_updates`) an epoch is a local round, not T samples,
so those rules are off and 1, 2 and 5 remain. The checks bound each peer by what the rest of the
swarm shows; a swarm made only of liars cannot be checked this way (rules 1 and 5 still cap them).

**Recent score.** Like BOINC's recent average credit: every credit adds to a score that decays
exponentially with half-life H (setting `leaderboard_half_life_s`): score(t) = sum of c_i x
2^(-(t - t_i) / H) (`backend.services.leaderboard.decayed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from peer.net.identity import PeerID
from peer.optim.progress import ProgressRecord, aggregate

MAX_CLOCK_SKEW_S = 300.0
EPOCH_SLACK = 2


@dataclass(frozen=True)
class ClaimRules:
    target_batch_size: int
    tolerance: float = 4.0
    max_samples_per_second: float = 1e6
    epoch_rules: bool = True  # False in DiLoCo runs (rules 3, 4 and 6 off)
    window_s: float = 600.0  # rules 3 and 4 only look this far back

    def __post_init__(self) -> None:
        if self.target_batch_size < 1:
            raise ValueError("target_batch_size must be at least 1")
        if self.tolerance < 1:
            raise ValueError("tolerance must be at least 1")
        if self.max_samples_per_second <= 0:
            raise ValueError("max_samples_per_second must be positive")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")


@dataclass(frozen=True)
class SwarmHistory:
    """The swarm as the previous readings left it."""

    epoch: int = 0
    samples_per_second: float = 0.0
    peers: int = 0  # trusted peers online at the previous reading
    at: float | None = None  # when the previous reading was taken; None: this is the first


@dataclass(frozen=True)
class Baseline:
    """Where a peer's credit counts up from: its total, the swarm's epoch, and when."""

    total: int
    epoch: int
    at: float


@dataclass(frozen=True)
class Credit:
    credited: int
    rejected: int
    reason: str | None  # why the claim was flagged; None when it was plausible
    baseline: Baseline


@dataclass(frozen=True)
class SwarmSummary:
    peers: int  # the trusted online peers it was computed from
    epoch: int
    samples_accumulated: int
    samples_per_second: float
    eta_s: float | None  # None when nobody trains
    loss: float | None


def check_record(
    record: ProgressRecord, history: SwarmHistory, rules: ClaimRules, now: float, swarm_speed: float = 0.0
) -> str | None:
    """Rules 1 to 3 (see the module docstring) on one progress record: why it is implausible, or None.
    `swarm_speed`: S_now, the samples/s all online peers claim in this reading (see `capped_speed`)."""
    if record.samples_per_second > rules.max_samples_per_second:
        return (
            f"claims {record.samples_per_second:.0f} samples/s, above the per-peer limit of "
            f"{rules.max_samples_per_second:.0f}"
        )
    if record.time > now + MAX_CLOCK_SKEW_S:
        return f"its record is dated {record.time - now:.0f} s in the future"
    if rules.epoch_rules and history.at is not None and history.peers > 0:
        elapsed = max(0.0, now - history.at)
        if elapsed <= rules.window_s:
            speed = max(history.samples_per_second, swarm_speed)
            allowed = (
                history.epoch + EPOCH_SLACK + rules.tolerance * elapsed * speed / rules.target_batch_size
            )
            if record.epoch > allowed:
                return f"claims epoch {record.epoch}, far ahead of the swarm's epoch {history.epoch}"
    return None


def judge_growth(
    record: ProgressRecord,
    baseline: Baseline | None,
    *,
    epoch_now: int,
    rules: ClaimRules,
    now: float,
    others_speed: float = 0.0,
    reason: str | None = None,
) -> Credit:
    """Credit for a peer whose new record reads `record.total_samples`: rules 4 to 6, restarts and the
    first sighting. `others_speed`: S_others, what the other online peers claim now. `reason`: the
    record already failed `check_record`, so any increase is rejected."""
    fresh = Baseline(record.total_samples, epoch_now, now)
    if baseline is None:
        return Credit(0, 0, reason, fresh)
    increase = record.total_samples - baseline.total
    if increase < 0:  # a restart: the counter came back lower
        return Credit(0, 0, reason, fresh)
    if reason is None:
        reason = _against_baseline(record, increase, baseline, epoch_now, rules, now, others_speed)
    if reason is not None:
        return Credit(0, increase, reason, fresh)
    return Credit(increase, 0, None, fresh)


def _against_baseline(
    record: ProgressRecord,
    increase: int,
    baseline: Baseline,
    epoch_now: int,
    rules: ClaimRules,
    now: float,
    others_speed: float,
) -> str | None:
    elapsed = max(now - baseline.at, 0.0)
    if increase > rules.max_samples_per_second * elapsed:
        return f"total grew by {increase} samples in {elapsed:.0f} s, beyond the per-peer limit"
    if not rules.epoch_rules:
        return None
    epochs = max(0, epoch_now - baseline.epoch) + 1
    if 0 < elapsed <= rules.window_s:
        supported = epochs * rules.target_batch_size / elapsed + others_speed
        if record.samples_per_second > rules.tolerance * supported:
            return (
                f"claims {record.samples_per_second:.1f} samples/s; the swarm's epochs and peers support "
                f"about {supported:.1f}"
            )
    if increase > rules.tolerance * (epochs * rules.target_batch_size + others_speed * elapsed):
        return (
            f"total grew by {increase} samples in {elapsed:.0f} s while the swarm advanced {epochs - 1} "
            f"epoch(s) of {rules.target_batch_size}"
        )
    return None


def robust_total(speeds: Iterable[float]) -> float:
    """What peers claiming `speeds` add up to, counted robustly: their number times their lower median
    claim. For an honest swarm of similar peers that is about their sum; a minority of peers that
    claim absurd speeds changes nothing (they would be the upper half)."""
    ordered = sorted(speeds)
    if not ordered:
        return 0.0
    return len(ordered) * ordered[(len(ordered) - 1) // 2]


def robust_totals_of_others(speeds: Mapping[str, float]) -> dict[str, float]:
    """For each peer, `robust_total` of every other peer's speed (S_others), in O(n log n)."""
    order = sorted(speeds, key=lambda peer: speeds[peer])
    count = len(order)
    if count < 2:
        return dict.fromkeys(order, 0.0)
    middle = (count - 2) // 2  # the lower median's index among the count - 1 others
    return {
        peer: (count - 1) * speeds[order[middle + 1] if index <= middle else order[middle]]
        for index, peer in enumerate(order)
    }


def capped_speed(record: ProgressRecord, rules: ClaimRules) -> float:
    """A record's claimed samples/s, at most the per-peer cap (what it adds to S_now and S_others)."""
    return min(record.samples_per_second, rules.max_samples_per_second)


def swarm_summary(records: dict[str, ProgressRecord], target_batch_size: int, now: float) -> SwarmSummary:
    """The swarm's epoch, progress, speed, ETA and loss from the records of its trusted online peers."""
    progress = aggregate(
        {PeerID.from_base58(peer_id): record for peer_id, record in records.items()}, target_batch_size, now
    )
    current = [record.loss for record in records.values() if record.epoch == progress.epoch]
    loss = _mean(loss for loss in current if loss is not None)
    if loss is None:
        loss = _mean(record.loss for record in records.values() if record.loss is not None)
    eta = progress.eta_next_epoch if math.isfinite(progress.eta_next_epoch) else None
    return SwarmSummary(
        len(records), progress.epoch, progress.samples_accumulated, progress.samples_per_second, eta, loss
    )


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None
