"""What the monitor reads from a run's swarm, parsed and re-checked item by item (pure: no I/O).

The monitor's DHT verifies every record on the read path (signatures always, and the run's schemas
from `peer.optim.run_validators`); a record that fails is dropped there and counted by the DHT node.
What arrives here is checked once more, item by item, and whatever does not parse is dropped and
counted too: a `<run>_progress` / `<run>_peers` subkey that is not an owner marker (an unsigned
entry), a value that does not fit `ProgressRecord` / `PeerRecord`, an expert declaration that is not
`[PeerID, [maddr, ...]]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import pydantic

from peer.dht import ValueWithExpiration
from peer.net.identity import PeerID
from peer.optim.progress import PEERS_SUFFIX, PROGRESS_SUFFIX, PeerRecord, ProgressRecord

OWNER_PREFIX, OWNER_SUFFIX = "[owner:", "]"
Model = TypeVar("Model", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class PeerSighting:
    """One peer as its records show it in one reading."""

    peer_id: str
    progress: ProgressRecord | None = None
    info: PeerRecord | None = None
    expiration: float = 0.0  # the newest expiration among its records: it grows while the peer lives


@dataclass(frozen=True)
class SwarmReading:
    """Everything one poll of a run's swarm found."""

    time: float  # unix seconds, when the reading was taken
    peers: dict[str, PeerSighting] = field(default_factory=dict)
    experts: dict[str, tuple[str, ...]] | None = None  # uid -> its servers; None: a run without experts
    invalid_records: int = 0  # dropped by the DHT's validators or by the checks here
    duration_s: float = 0.0


def progress_key(run: str) -> str:
    return run + PROGRESS_SUFFIX


def peers_key(run: str) -> str:
    return run + PEERS_SUFFIX


def _owner(subkey: object) -> str | None:
    """The base58 PeerID of an owner-marker subkey, or None if it is not one."""
    if not (isinstance(subkey, str) and subkey.startswith(OWNER_PREFIX) and subkey.endswith(OWNER_SUFFIX)):
        return None
    text = subkey[len(OWNER_PREFIX) : -len(OWNER_SUFFIX)]
    try:
        return PeerID.from_base58(text).to_base58()
    except ValueError:
        return None


def _items(
    found: ValueWithExpiration | None, model: type[Model]
) -> tuple[dict[str, tuple[Model, float]], int]:
    """Each owner's record under one dictionary key, and how many entries were invalid."""
    if found is None:
        return {}, 0
    if not isinstance(found.value, dict):
        return {}, 1  # a plain value where every peer's signed subkey belongs
    records: dict[str, tuple[Model, float]] = {}
    invalid = 0
    for subkey, item in found.value.items():
        owner = _owner(subkey)
        value = getattr(item, "value", None)
        try:
            if owner is None:
                raise ValueError("not an owner-marker subkey")
            records[owner] = (model.model_validate(value), float(item.expiration_time))
        except (ValueError, TypeError, pydantic.ValidationError):
            invalid += 1
    return records, invalid


def parse_swarm_records(
    progress: ValueWithExpiration | None, peers: ValueWithExpiration | None
) -> tuple[dict[str, PeerSighting], int]:
    """Sightings from the `<run>_progress` and `<run>_peers` values, and the invalid entries' count."""
    progress_items, invalid_progress = _items(progress, ProgressRecord)
    info_items, invalid_info = _items(peers, PeerRecord)
    sightings: dict[str, PeerSighting] = {}
    for peer_id, (progress_record, expiration) in progress_items.items():
        sightings[peer_id] = PeerSighting(peer_id, progress=progress_record, expiration=expiration)
    for peer_id, (info_record, expiration) in info_items.items():
        known = sightings.get(peer_id, PeerSighting(peer_id))
        sightings[peer_id] = replace(known, info=info_record, expiration=max(known.expiration, expiration))
    return sightings, invalid_progress + invalid_info


def parse_expert_declarations(
    uids: Sequence[str], found: Mapping[str, ValueWithExpiration | None]
) -> tuple[dict[str, tuple[str, ...]], int]:
    """uid -> the PeerIDs serving it (most recently refreshed first) for every declared uid, and how
    many declarations were malformed.

    A declaration (`peer.moe.dht_declaration`) is `[peer_id, [maddr, ...]]`, either the uid key's
    plain value or, one per replica, under the serving peer's owner-marker subkey (signed by it)."""
    serving: dict[str, tuple[str, ...]] = {}
    invalid = 0
    for uid in uids:
        item = found.get(uid)
        if item is None:
            continue
        if isinstance(item.value, dict):
            replicas = [(entry, subkey) for subkey, entry in item.value.items()]
        else:
            replicas = [(item, None)]
        servers: list[tuple[float, str]] = []
        for entry, subkey in replicas:
            peer_id = _declared_server(getattr(entry, "value", None), subkey)
            if peer_id is None:
                invalid += 1
            else:
                servers.append((float(entry.expiration_time), peer_id))
        if servers:
            servers.sort(reverse=True)
            serving[uid] = tuple(dict.fromkeys(peer_id for _, peer_id in servers))
    return serving, invalid


def _declared_server(value: object, subkey: object) -> str | None:
    """The serving PeerID of one declaration, or None if it is malformed (or names another owner)."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
        return None
    if not isinstance(value[1], list):
        return None
    try:
        peer_id = PeerID.from_base58(value[0]).to_base58()
    except ValueError:
        return None
    if subkey is not None and _owner(subkey) != peer_id:
        return None
    return peer_id
