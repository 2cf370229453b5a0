"""The site's side of `benchmarks/site_load.py`: a run with a synthetic swarm's history, written
through the monitor's own write path (`backend.monitor.store.record_reading`, the accounting and the
retention included), and a `MonitorWriter` that keeps storing a poll every interval during the load.

`SyntheticSwarm` makes honest peers whose records grow plausibly (nothing gets flagged); about a tenth
of them are offline at any time, and the first third serve the run's experts. `prepare` creates the
run (an open Mixture-of-Experts run: some volunteers hold tokens for three peers each, the other
peers are credited by PeerID), `fill_history` stores its past polls.
"""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from backend.models import SwarmPoint
from backend.monitor.accounting import ClaimRules
from backend.monitor.monitor import MonitorConfig
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import RunAccounting, StoreOptions, record_reading
from backend.schemas import RunCreate
from backend.services.runs import create_run
from backend.services.swarm import expert_grid
from backend.services.tokens import issue_access_token
from backend.services.users import create_user
from backend.settings import Settings
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord


@dataclass(frozen=True)
class SyntheticPeer:
    peer_id: str
    speed: float  # samples/s
    device: str
    reachability: str
    username: str | None  # as it declares itself (never trusted)


class SyntheticSwarm:
    """Honest peers whose records grow plausibly (nothing gets flagged); about a tenth of them are
    offline at any time (a window that moves every 10 minutes), and the first third serve experts."""

    def __init__(self, peers: list[SyntheticPeer], expert_uids: list[str], target_batch_size: int, t0: float):
        self.peers, self.expert_uids, self.t0 = peers, expert_uids, t0
        self.target_batch_size = target_batch_size
        self.speed = sum(peer.speed for peer in peers)

    def online(self, index: int, t: float) -> bool:
        return (int((t - self.t0) // 600) + index) % 10 != 0

    def reading(self, t: float, duration_s: float = 0.2) -> SwarmReading:
        done = self.speed * (t - self.t0)
        epoch, accumulated = int(done // self.target_batch_size), done % self.target_batch_size
        loss = 0.8 + 3.5 * math.exp(-(t - self.t0) / 7200)
        sightings = {}
        for index, peer in enumerate(self.peers):
            if not self.online(index, t):
                continue
            progress = ProgressRecord(
                epoch=epoch,
                samples_accumulated=int(accumulated * peer.speed / self.speed),
                samples_per_second=peer.speed,
                loss=loss * (1 + 0.02 * math.sin(index + t / 60)),
                mini_steps=4,
                total_samples=int(peer.speed * (t - self.t0)),
                time=t,
            )
            info = PeerRecord(
                version="0.1.0", reachability=peer.reachability, device=peer.device, username=peer.username
            )
            sightings[peer.peer_id] = PeerSighting(
                peer.peer_id, progress=progress, info=info, expiration=t + 60
            )
        servers = [
            peer for index, peer in enumerate(self.peers[: len(self.peers) // 3]) if self.online(index, t)
        ]
        experts = {}
        for number, uid in enumerate(self.expert_uids):
            serving = (
                [servers[(number + replica * 7) % len(servers)] for replica in range(2)] if servers else []
            )
            if serving and number % 8 != 7:  # a few experts are never served
                experts[uid] = tuple(dict.fromkeys(peer.peer_id for peer in serving))
        return SwarmReading(
            time=t, peers=sightings, experts=experts, invalid_records=0, duration_s=duration_s
        )


@dataclass
class Prepared:
    slug: str
    swarm: SyntheticSwarm
    accounting: RunAccounting
    options: StoreOptions
    fill_s: float = 0.0
    readings: int = 0
    points: int = 0


def store_reading(factory: sessionmaker[Session], prepared: Prepared, reading: SwarmReading) -> int:
    """One poll through the monitor's write path, committed; returns the run's new status version."""
    with factory() as session:
        status = record_reading(session, run=prepared.accounting, reading=reading, options=prepared.options)
        version = status.version
        session.commit()
    return version


def prepare(
    factory: sessionmaker[Session], settings: Settings, args: argparse.Namespace, rng: random.Random
) -> Prepared:
    """An open MoE run: `--users` volunteers hold tokens for 3 peers each, the other peers have none."""
    slug, secret = "load-" + uuid.uuid4().hex[:8], settings.resolved_secret_key()
    peer_ids = [Identity.generate().peer_id.to_base58() for _ in range(args.peers)]
    body = RunCreate(
        slug=slug,
        name="Site load benchmark",
        description="A run for **benchmarks/site_load.py**: " + "lorem ipsum " * 40,
        recipe={"name": "moe-char-transformer", "config": {}},
        target_batch_size=16384,
        auth_mode="open",
        initial_peers=["/ip4/127.0.0.1/tcp/31337/p2p/" + peer_ids[0]],
    )
    with factory() as session:
        owner = create_user(
            session, email=f"{slug}@example.org", username=slug, password="x" * 16, role="organizer"
        )
        run = create_run(session, owner=owner, data=body, secret_key=secret)
        for number in range(min(args.users, args.peers // 3)):
            name = f"v{number}-{slug}"
            user = create_user(
                session, email=f"{name}@example.org", username=name, password="x" * 16, role="volunteer"
            )
            for peer_id in peer_ids[3 * number : 3 * number + 3]:
                issue_access_token(
                    session, run=run, user=user, peer_public_key=peer_id, lifetime_s=3600, secret_key=secret
                )
        session.commit()
        run_id, grid = run.id, list(expert_grid(run.recipe_name, run.recipe_config))
    devices, reachabilities = ["cpu", "cuda", "cuda:0", "mps"], ["direct", "direct", "relayed", "client"]
    peers = [
        SyntheticPeer(
            peer_id, rng.uniform(5, 40), rng.choice(devices), rng.choice(reachabilities), f"claimed{i}"
        )
        for i, peer_id in enumerate(peer_ids)
    ]
    swarm = SyntheticSwarm(peers, grid, body.target_batch_size, t0=time.time() - args.history_hours * 3600)
    rules = ClaimRules(
        target_batch_size=body.target_batch_size,
        tolerance=settings.sanity_tolerance,
        max_samples_per_second=settings.sanity_max_samples_per_second,
    )
    accounting = RunAccounting(run_id=run_id, rules=rules, credit_peers=True)
    return Prepared(slug, swarm, accounting, MonitorConfig.from_settings(settings).store)


def fill_history(factory: sessionmaker[Session], prepared: Prepared, interval_s: float) -> None:
    """Polls from `t0` to now: one a minute, then one every `interval_s` for the last hour."""
    started = time.perf_counter()
    t, now = prepared.swarm.t0, time.time()
    while t < now:
        store_reading(factory, prepared, prepared.swarm.reading(t))
        prepared.readings += 1
        t += 60.0 if now - t > 3600 else interval_s
    prepared.fill_s = time.perf_counter() - started
    with factory() as session:
        prepared.points = session.scalar(
            select(func.count()).where(SwarmPoint.run_id == prepared.accounting.run_id)
        )


@dataclass
class PollLog:
    version: int
    data_t: float  # the reading's time (when the swarm was read)
    committed: float
    store_s: float


class MonitorWriter(threading.Thread):
    """A poll every `interval_s` through the monitor's write path, logged for the lag figures."""

    def __init__(self, factory: sessionmaker[Session], prepared: Prepared, interval_s: float):
        super().__init__(name="monitor-writer", daemon=True)
        self.factory, self.prepared, self.interval_s = factory, prepared, interval_s
        self.stop = threading.Event()
        self.log: list[PollLog] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            t = time.time()
            try:
                version = store_reading(self.factory, self.prepared, self.prepared.swarm.reading(t))
            except Exception as e:  # keep polling, like the monitor; the report counts it
                self.errors.append(f"{type(e).__name__}: {e}")
                continue
            committed = time.time()
            self.log.append(PollLog(version, t, committed, committed - t))
