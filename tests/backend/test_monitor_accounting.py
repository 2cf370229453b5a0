"""The monitor's pure parts: parsing what the DHT returned, the credit rules and sanity checks, the
decaying score, the swarm summary, and merging points for retention."""

from __future__ import annotations

import math

import pytest

from backend.monitor import MonitorConfig
from backend.monitor.accounting import (
    Baseline,
    ClaimRules,
    SwarmHistory,
    check_record,
    judge_growth,
    swarm_summary,
)
from backend.monitor.records import parse_expert_declarations, parse_swarm_records
from backend.monitor.retention import PointValues, RetentionPolicy, RetentionTier, merge_points
from backend.services.leaderboard import decayed
from backend.settings import Settings
from peer.dht import ValueWithExpiration, owner_marker
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord

NOW = 1_700_000_000.0
RULES = ClaimRules(target_batch_size=1000, tolerance=4.0, max_samples_per_second=10_000)


def record(total: int = 0, *, epoch: int = 5, speed: float = 50.0, time: float = NOW) -> ProgressRecord:
    return ProgressRecord(
        epoch=epoch,
        samples_accumulated=100,
        samples_per_second=speed,
        loss=2.0,
        mini_steps=3,
        total_samples=total,
        time=time,
    )


def test_records_are_parsed_per_owner_and_every_bad_entry_is_counted():
    alice, bob = Identity.generate().peer_id, Identity.generate().peer_id
    progress = ValueWithExpiration(
        {
            owner_marker(alice): ValueWithExpiration(record(10).model_dump(), NOW + 60),
            owner_marker(bob): ValueWithExpiration({"epoch": "five"}, NOW + 60),  # against the schema
            "anonymous": ValueWithExpiration(record(5).model_dump(), NOW + 60),  # not signed by anyone
        },
        NOW + 60,
    )
    peers = ValueWithExpiration(
        {
            owner_marker(bob): ValueWithExpiration(
                PeerRecord(version="1", device="cuda").model_dump(), NOW + 90
            )
        },
        NOW + 90,
    )
    sightings, invalid = parse_swarm_records(progress, peers)
    assert invalid == 2
    assert sightings[alice.to_base58()].progress.total_samples == 10
    assert sightings[alice.to_base58()].info is None
    assert sightings[bob.to_base58()].progress is None and sightings[bob.to_base58()].info.device == "cuda"
    assert sightings[bob.to_base58()].expiration == NOW + 90
    assert parse_swarm_records(ValueWithExpiration("not a dictionary", NOW), None) == ({}, 1)
    assert parse_swarm_records(None, None) == ({}, 0)


def test_expert_declarations_in_both_forms_and_malformed_ones_counted():
    server, other = Identity.generate().peer_id, Identity.generate().peer_id
    found = {
        "ffn.0.0": ValueWithExpiration([server.to_base58(), ["/ip4/1.2.3.4/tcp/1"]], NOW + 30),
        "ffn.0.1": ValueWithExpiration(
            {
                owner_marker(server): ValueWithExpiration([server.to_base58(), []], NOW + 10),
                owner_marker(other): ValueWithExpiration([other.to_base58(), []], NOW + 20),
                # a replica whose subkey names someone other than the server it declares
                owner_marker(Identity.generate().peer_id): ValueWithExpiration([server.to_base58(), []], NOW),
            },
            NOW + 20,
        ),
        "ffn.1.0": ValueWithExpiration(["not a peer id", []], NOW + 30),
        "ffn.1.1": None,
    }
    serving, invalid = parse_expert_declarations(list(found), found)
    assert serving == {
        "ffn.0.0": (server.to_base58(),),
        "ffn.0.1": (other.to_base58(), server.to_base58()),  # most recently refreshed first
    }
    assert invalid == 2


def test_first_sighting_sets_the_baseline_and_increases_are_credited():
    first = judge_growth(record(500), None, epoch_now=5, rules=RULES, now=NOW)
    assert (first.credited, first.rejected, first.reason) == (0, 0, None)
    assert first.baseline == Baseline(500, 5, NOW)
    second = judge_growth(record(900), first.baseline, epoch_now=5, rules=RULES, now=NOW + 10)
    assert (second.credited, second.reason) == (400, None)
    assert second.baseline == Baseline(900, 5, NOW + 10)


def test_a_counter_that_goes_down_is_a_restart_and_credits_nothing():
    verdict = judge_growth(record(100), Baseline(5000, 5, NOW), epoch_now=6, rules=RULES, now=NOW + 10)
    assert (verdict.credited, verdict.rejected, verdict.reason) == (0, 0, None)
    assert verdict.baseline.total == 100
    after = judge_growth(record(300), verdict.baseline, epoch_now=6, rules=RULES, now=NOW + 20)
    assert after.credited == 200


def test_growth_beyond_what_the_swarm_epochs_support_is_rejected():
    baseline = Baseline(0, 5, NOW)
    # no epoch advanced in 10 s: at most tolerance x 1 epoch of 1000 samples
    plausible = judge_growth(record(3000, speed=50), baseline, epoch_now=5, rules=RULES, now=NOW + 10)
    assert plausible.credited == 3000
    jump = judge_growth(record(50_000, speed=50), baseline, epoch_now=5, rules=RULES, now=NOW + 10)
    assert jump.credited == 0 and jump.rejected == 50_000 and "advanced 0 epoch" in jump.reason
    assert jump.baseline.total == 50_000  # the rejected samples are never credited later
    # ten epochs later the same growth is plausible
    later = judge_growth(record(30_000, speed=50), baseline, epoch_now=15, rules=RULES, now=NOW + 600)
    assert later.credited == 30_000


def test_growth_faster_than_the_per_peer_cap_is_rejected_even_without_epoch_rules():
    rules = ClaimRules(target_batch_size=1000, max_samples_per_second=100, epoch_rules=False)
    verdict = judge_growth(
        record(5000, speed=50), Baseline(0, 0, NOW), epoch_now=0, rules=rules, now=NOW + 10
    )
    assert verdict.credited == 0 and "per-peer limit" in verdict.reason
    ok = judge_growth(record(900, speed=90), Baseline(0, 0, NOW), epoch_now=0, rules=rules, now=NOW + 10)
    assert ok.credited == 900


def test_a_speed_claim_far_above_what_the_epochs_support_is_flagged():
    baseline = Baseline(0, 5, NOW)
    # 10 s and no epoch: the swarm did at most ~1000 samples, i.e. 100/s; 4x tolerance -> 400/s
    verdict = judge_growth(record(100, speed=5000), baseline, epoch_now=5, rules=RULES, now=NOW + 10)
    assert verdict.credited == 0 and "samples/s" in verdict.reason
    # other peers claiming 2000 samples/s between them make it plausible (epochs overshoot T)
    shared = judge_growth(
        record(100, speed=5000), baseline, epoch_now=5, rules=RULES, now=NOW + 10, others_speed=2000
    )
    assert shared.credited == 100 and shared.reason is None


def test_a_fast_swarm_with_a_small_batch_is_not_flagged_while_it_speeds_up():
    """Seen in `make demo`: three CPU peers, T = 256, starting slowly, then ~500 samples/s each; epochs
    go by faster than the monitor polls, and each overshoots T (peers sync every second)."""
    rules = ClaimRules(target_batch_size=256)
    history = SwarmHistory(epoch=0, samples_per_second=8.7, peers=3, at=NOW - 10)
    now_claims = record(5000, epoch=20, speed=500.0)
    assert check_record(now_claims, history, rules, NOW, swarm_speed=1500.0) is None
    assert "ahead of the swarm" in check_record(record(epoch=2000, speed=500.0), history, rules, NOW, 1500.0)
    verdict = judge_growth(
        now_claims, Baseline(0, 0, NOW - 10), epoch_now=20, rules=rules, now=NOW, others_speed=1000
    )
    assert verdict.credited == 5000 and verdict.reason is None


def test_check_record_flags_absurd_speed_future_records_and_runaway_epochs():
    history = SwarmHistory(epoch=5, samples_per_second=100.0, peers=3, at=NOW - 10)
    assert check_record(record(), history, RULES, NOW) is None
    assert "per-peer limit" in check_record(record(speed=1e9), history, RULES, NOW)
    assert "future" in check_record(record(time=NOW + 3600), history, RULES, NOW)
    assert "ahead of the swarm" in check_record(record(epoch=10_000), history, RULES, NOW)
    # without a recent history with peers online, a far epoch is not judged (a swarm resuming)
    assert check_record(record(epoch=10_000), SwarmHistory(epoch=0, peers=0, at=NOW - 10), RULES, NOW) is None
    assert check_record(record(epoch=10_000), SwarmHistory(epoch=5, peers=3, at=None), RULES, NOW) is None
    diloco = ClaimRules(target_batch_size=1000, epoch_rules=False)
    assert check_record(record(epoch=10_000), history, diloco, NOW) is None


def test_a_rejected_claim_rejects_its_increase():
    verdict = judge_growth(
        record(200), Baseline(100, 5, NOW), epoch_now=5, rules=RULES, now=NOW + 10, reason="x"
    )
    assert (verdict.credited, verdict.rejected, verdict.reason) == (0, 100, "x")


def test_the_recent_score_halves_every_half_life():
    assert decayed(100.0, NOW, NOW + 3600, 3600) == pytest.approx(50.0)
    assert decayed(100.0, NOW, NOW, 3600) == 100.0
    assert decayed(100.0, NOW, NOW - 5, 3600) == 100.0  # no growth from a clock going backwards
    with pytest.raises(ValueError, match="half_life_s"):
        decayed(1.0, NOW, NOW, 0)


def test_swarm_summary_counts_the_current_epoch():
    ids = [Identity.generate().peer_id.to_base58() for _ in range(3)]
    records = {
        ids[0]: record(epoch=5, speed=10, time=NOW),
        ids[1]: record(epoch=5, speed=30, time=NOW),
        ids[2]: ProgressRecord(
            epoch=4, samples_accumulated=900, samples_per_second=60, loss=9.0, mini_steps=1, time=NOW
        ),
    }
    summary = swarm_summary(records, 1000, NOW)
    assert (summary.peers, summary.epoch, summary.samples_accumulated) == (3, 5, 200)
    assert summary.samples_per_second == pytest.approx(100)
    assert summary.eta_s == pytest.approx(8.0)
    assert summary.loss == pytest.approx(2.0)  # the current epoch's peers only
    empty = swarm_summary({}, 1000, NOW)
    assert (empty.peers, empty.eta_s, empty.loss) == (0, None, None)


def test_monitor_settings_map_to_its_config_and_refuse_shrinking_retention(tmp_path):
    settings = Settings(
        secret_key_file=tmp_path / "secret",
        monitor_interval_s=5,
        monitor_offline_after_intervals=4,
        monitor_offline_min_s=12,
        monitor_retention_raw_s=600,
        leaderboard_half_life_s=3600,
    )
    config = MonitorConfig.from_settings(settings)
    assert config.interval_s == 5 and config.store.offline_after_s == 20 and config.store.half_life_s == 3600
    assert [tier.after_s for tier in config.store.retention.tiers] == [600, 24 * 3600, 30 * 24 * 3600]
    with pytest.raises(ValueError, match="retention must grow"):
        Settings(secret_key_file=tmp_path / "secret", monitor_retention_raw_s=2 * 24 * 3600)


def test_rules_and_policies_refuse_bad_parameters():
    with pytest.raises(ValueError, match="target_batch_size"):
        ClaimRules(target_batch_size=0)
    with pytest.raises(ValueError, match="tolerance"):
        ClaimRules(target_batch_size=1, tolerance=0.5)
    with pytest.raises(ValueError, match="grow"):
        RetentionPolicy((RetentionTier(3600, 60), RetentionTier(1800, 3600)))
    with pytest.raises(ValueError, match="resolution_s"):
        RetentionPolicy((RetentionTier(30, 60),))


def test_merged_points_keep_the_last_total_and_weighted_means():
    points = [
        PointValues(
            t=0.0,
            resolution_s=0,
            weight=1,
            peers=2,
            samples_per_second=10,
            epoch=1,
            loss=4.0,
            total_samples=10,
        ),
        PointValues(
            t=30.0,
            resolution_s=0,
            weight=1,
            peers=4,
            samples_per_second=30,
            epoch=3,
            loss=None,
            total_samples=70,
        ),
        PointValues(
            t=10.0,
            resolution_s=60,
            weight=2,
            peers=1,
            samples_per_second=20,
            epoch=2,
            loss=1.0,
            total_samples=40,
        ),
    ]
    merged = merge_points(points, 0.0, 3600)
    assert (merged.t, merged.resolution_s, merged.weight) == (0.0, 3600, 4)
    assert merged.total_samples == 70 and merged.epoch == 3
    assert merged.peers == pytest.approx((2 + 4 + 2) / 4)
    assert merged.samples_per_second == pytest.approx((10 + 30 + 40) / 4)
    assert merged.loss == pytest.approx((4.0 + 2.0) / 3)
    assert math.isclose(merge_points(points[1:2], 0.0, 60).peers, 4)
