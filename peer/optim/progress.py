"""The swarm's training progress, read from and published to signed DHT records.

Every peer publishes `<run>_progress` under the subkey `owner_marker(peer_id)` (so only it can write
it), with the schema `ProgressRecord`. Reading all of them gives the global view: the current epoch,
the samples accumulated towards `target_batch_size` in that epoch, the swarm's samples per second
and the ETA to the next epoch. The site's monitor reads the same records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pydantic

from peer.dht import DHT, SchemaValidator, get_dht_time, owner_marker
from peer.net.identity import PeerID

PROGRESS_SUFFIX = "_progress"
PEERS_SUFFIX = "_peers"


# Bounds no honest peer reaches: a record beyond them is refused by every DHT node (on store and on
# read) and by every reader. They keep what readers do with the numbers safe: the site stores epochs in
# 32-bit columns and sample counts in 64-bit ones, and sums of many peers' counts and speeds.
MAX_EPOCH = 2**31 - 1
MAX_SAMPLES = 2**53 - 1  # counts of samples and steps (exact as floats too)
MAX_SAMPLES_PER_SECOND = float(2**53)
MAX_ABS_LOSS = 2.0**128  # above every finite float32
MAX_TIME = 2.0**40  # unix seconds (the year 36812)
_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class ProgressRecord(pydantic.BaseModel):
    """One peer's progress (the value under its subkey of `<run>_progress`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    epoch: int = pydantic.Field(ge=0, le=MAX_EPOCH)
    samples_accumulated: int = pydantic.Field(ge=0, le=MAX_SAMPLES)
    samples_per_second: float = pydantic.Field(ge=0, le=MAX_SAMPLES_PER_SECOND, allow_inf_nan=False)
    loss: float | None = pydantic.Field(default=None, gt=-MAX_ABS_LOSS, lt=MAX_ABS_LOSS, allow_inf_nan=False)
    mini_steps: int = pydantic.Field(ge=0, le=MAX_SAMPLES)
    # every sample this peer processed, all epochs
    total_samples: int = pydantic.Field(default=0, ge=0, le=MAX_SAMPLES)
    time: float = pydantic.Field(ge=0, le=MAX_TIME, allow_inf_nan=False)
    client_mode: bool = False


class PeerRecord(pydantic.BaseModel):
    """One peer's description (the value under its subkey of `<run>_peers`); no control characters."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    version: str = pydantic.Field(max_length=64, pattern=_NO_CONTROL_CHARACTERS)
    maddrs: list[str] = pydantic.Field(default_factory=list, max_length=16)
    # "direct", "relayed" or "client"
    reachability: str = pydantic.Field("direct", max_length=16, pattern=_NO_CONTROL_CHARACTERS)
    device: str = pydantic.Field("cpu", max_length=64, pattern=_NO_CONTROL_CHARACTERS)
    username: str | None = pydantic.Field(default=None, max_length=64, pattern=_NO_CONTROL_CHARACTERS)


def run_validators(run_id: str) -> list[SchemaValidator]:
    """The schema validators every peer of `run_id` installs (signatures are always checked)."""
    return [SchemaValidator({run_id + PROGRESS_SUFFIX: ProgressRecord, run_id + PEERS_SUFFIX: PeerRecord})]


@dataclass(frozen=True)
class GlobalProgress:
    epoch: int
    samples_accumulated: int  # by all peers, towards this epoch's target
    target_batch_size: int
    samples_per_second: float
    num_peers: int
    eta_next_epoch: float  # seconds; inf when nobody is training
    peers: dict[PeerID, ProgressRecord]

    @property
    def ready_to_step(self) -> bool:
        return self.samples_accumulated >= self.target_batch_size

    def estimated_samples(self, now: float, *, exclude: PeerID | None = None) -> float:
        """The samples the peers of this epoch (but `exclude`) have accumulated by `now`: what each
        reported, plus what it processed since at its reported speed (at most one target batch)."""
        return sum(
            record.samples_accumulated
            + min(record.samples_per_second * max(0.0, now - record.time), self.target_batch_size)
            for peer_id, record in self.peers.items()
            if record.epoch == self.epoch and peer_id != exclude
        )


class ProgressTracker:
    """Publishes this peer's progress and aggregates everyone's."""

    def __init__(self, dht: DHT, run_id: str, target_batch_size: int, *, record_ttl: float = 60.0):
        if target_batch_size <= 0:
            raise ValueError("target_batch_size must be positive")
        self.dht = dht
        self.run_id = run_id
        self.key = run_id + PROGRESS_SUFFIX
        self.peers_key = run_id + PEERS_SUFFIX
        self.target_batch_size = target_batch_size
        self.record_ttl = record_ttl

    async def apublish(self, record: ProgressRecord) -> bool:
        subkey = owner_marker(self.dht.peer_id)
        return await self.dht.astore(self.key, record.model_dump(), get_dht_time() + self.record_ttl, subkey)

    async def apublish_peer(self, record: PeerRecord, ttl: float | None = None) -> bool:
        subkey = owner_marker(self.dht.peer_id)
        expiration = get_dht_time() + (ttl or self.record_ttl)
        return await self.dht.astore(self.peers_key, record.model_dump(), expiration, subkey)

    async def afetch(self, local: ProgressRecord | None = None) -> GlobalProgress:
        found = await self.dht.aget(self.key, latest=True)
        peers = parse_progress(found.value if found is not None else None)
        if local is not None:
            peers[self.dht.peer_id] = local
        return aggregate(peers, self.target_batch_size, now=get_dht_time())


def parse_progress(value: object) -> dict[PeerID, ProgressRecord]:
    """Records from a `<run>_progress` dictionary; malformed entries are skipped."""
    peers: dict[PeerID, ProgressRecord] = {}
    if not isinstance(value, dict):
        return peers
    for subkey, item in value.items():
        if not (isinstance(subkey, str) and subkey.startswith("[owner:") and subkey.endswith("]")):
            continue
        try:
            peer_id = PeerID.from_base58(subkey[len("[owner:") : -1])
            peers[peer_id] = ProgressRecord.model_validate(item.value)
        except (ValueError, pydantic.ValidationError):
            continue
    return peers


def aggregate(peers: dict[PeerID, ProgressRecord], target_batch_size: int, now: float) -> GlobalProgress:
    """The global view from every peer's latest record (pure; see the module docstring)."""
    if not peers:
        return GlobalProgress(0, 0, target_batch_size, 0.0, 0, math.inf, {})
    epoch = max(record.epoch for record in peers.values())
    current = [record for record in peers.values() if record.epoch == epoch]
    samples = sum(record.samples_accumulated for record in current)
    # a peer's samples keep accruing since it published: extrapolate, but never beyond one epoch
    extrapolated = sum(
        min(record.samples_per_second * max(0.0, now - record.time), target_batch_size) for record in current
    )
    speed = sum(record.samples_per_second for record in peers.values())
    remaining = max(0.0, target_batch_size - samples - extrapolated)
    eta = remaining / speed if speed > 0 else math.inf
    return GlobalProgress(epoch, samples, target_batch_size, speed, len(peers), eta, dict(peers))
