"""Expert declarations in the DHT, and the async driver of the beam search over them.

Records (values are msgpack lists; every record expires unless its server refreshes it):

    key "ffn.3.17" subkey [owner:P]  value [P, [maddr, ...]]              P serves ffn.3.17 (signed by P)
    key "ffn."     subkey 3          value [uid, peer_id, [maddr, ...]]   a live expert below ffn.3.
    key "ffn.3."   subkey 17         value [uid, peer_id, [maddr, ...]]   the expert ffn.3.17 itself

So every grid prefix is a DHT dictionary of its populated next coordinates, which is all
`ExpertBeamSearch` needs. An expert's own key is a dictionary of its *replicas*: one subkey per
server, marked with its owner (`peer.dht.owner_marker`), so only that server can write it and each
replica expires on its own. `get_expert_replicas` counts them (a joining peer hosts the experts that
are missing or least replicated). A server that dies stops refreshing, and its records expire.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from peer.dht import owner_marker
from peer.dht.dht import DHT
from peer.dht.storage import ValueWithExpiration
from peer.moe.beam_search import ExpertBeamSearch, ExpertEntry
from peer.moe.expert_uid import ExpertUID
from peer.net.identity import PeerID
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)


def declaration_records(
    uids: Sequence[str], peer_id: str, maddrs: Sequence[str]
) -> dict[tuple[str, int | str], list[Any]]:
    """The (key, subkey) -> value records that declare `uids` served by `peer_id` (base58; pure)."""
    replica = owner_marker(PeerID.from_base58(peer_id))
    records: dict[tuple[str, int | str], list[Any]] = {}
    for uid in uids:
        parsed = ExpertUID.parse(uid)
        records[(uid, replica)] = [peer_id, list(maddrs)]
        for depth, prefix in enumerate(parsed.grid_prefixes):
            records[(prefix, parsed.coords[depth])] = [uid, peer_id, list(maddrs)]
    return records


async def adeclare_experts(
    dht: DHT, uids: Sequence[str], expiration_time: float, maddrs: Sequence[str] | None = None
) -> dict[str, bool]:
    """Declare that this DHT's peer serves `uids` until `expiration_time`; maps uid -> stored."""
    peer_id = dht.peer_id.to_base58()
    maddrs = list(maddrs) if maddrs is not None else dht.get_visible_maddrs()
    records = declaration_records(uids, peer_id, maddrs)
    keys = [key for key, _ in records]
    subkeys = [subkey for _, subkey in records]
    outcome = await dht.astore_many(keys, list(records.values()), expiration_time, subkeys)
    replica = owner_marker(dht.peer_id)
    return {uid: bool(outcome.get((uid, replica), False)) for uid in uids}


def declare_experts(
    dht: DHT, uids: Sequence[str], expiration_time: float, maddrs: Sequence[str] | None = None
) -> dict[str, bool]:
    return run_coroutine(adeclare_experts(dht, uids, expiration_time, maddrs))


def _parse_replicas(uid: str, found: ValueWithExpiration | None) -> list[ExpertEntry]:
    """The servers of `uid`, most recently refreshed first; malformed entries are skipped."""
    if found is None or not isinstance(found.value, dict):
        return []
    replicas = []
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        if (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], list)
            and _names_owner(subkey, value[0])
        ):
            entry = ExpertEntry(uid, value[0], tuple(str(m) for m in value[1]))
            replicas.append((item.expiration_time, entry))
    replicas.sort(key=lambda pair: -pair[0])
    return [entry for _, entry in replicas]


def _parse_prefix_value(found: ValueWithExpiration | None) -> dict[int, ExpertEntry]:
    if found is None or not isinstance(found.value, dict):
        return {}
    successors = {}
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        if (
            isinstance(subkey, int)
            and isinstance(value, list)
            and len(value) == 3
            and isinstance(value[0], str)
            and isinstance(value[1], str)
            and isinstance(value[2], list)
        ):
            successors[subkey] = ExpertEntry(value[0], value[1], tuple(str(m) for m in value[2]))
    return successors


def _names_owner(subkey: object, peer_id: str) -> bool:
    """Whether a replica's (signed) subkey is the owner marker of the server its value names."""
    try:
        return subkey == owner_marker(PeerID.from_base58(peer_id))
    except ValueError:
        return False


async def aget_experts(dht: DHT, uids: Sequence[str]) -> list[ExpertEntry | None]:
    """Where each of `uids` is served (its most recently refreshed server), or None for an expert
    nobody declares."""
    found = await dht.aget_many(list(uids))
    return [next(iter(_parse_replicas(uid, found.get(uid))), None) for uid in uids]


def get_experts(dht: DHT, uids: Sequence[str]) -> list[ExpertEntry | None]:
    return run_coroutine(aget_experts(dht, uids))


async def aget_expert_replicas(dht: DHT, uids: Sequence[str]) -> dict[str, list[ExpertEntry]]:
    """Every live server of each of `uids` (asking every replica of each key for the newest records);
    an empty list for an expert nobody serves."""
    found = await dht.aget_many(list(uids), latest=True)
    return {uid: _parse_replicas(uid, found.get(uid)) for uid in uids}


def get_expert_replicas(dht: DHT, uids: Sequence[str]) -> dict[str, list[ExpertEntry]]:
    return run_coroutine(aget_expert_replicas(dht, uids))


async def afind_best_experts(
    dht: DHT,
    prefix: str,
    grid_scores: Sequence[Sequence[Sequence[float]]],
    k_best: int,
    beam_size: int = 0,
) -> list[list[tuple[ExpertEntry, float]]]:
    """For each sample (`grid_scores[sample][dim][coord]`), its `k_best` declared experts, best first.

    All samples' searches advance in lockstep; each round fetches every prefix any of them needs in
    one bulk DHT lookup, and a prefix is fetched at most once per call.
    """
    searches = [ExpertBeamSearch(prefix, scores, k_best, beam_size) for scores in grid_scores]
    cache: dict[str, dict[int, ExpertEntry]] = {}
    while True:
        wanted = {search_id: search.next_prefixes() for search_id, search in enumerate(searches)}
        missing = sorted({key for keys in wanted.values() for key in keys if key not in cache})
        if not any(wanted.values()):
            break
        if missing:
            found = await dht.aget_many(missing)
            for key in missing:
                cache[key] = _parse_prefix_value(found.get(key))
        for search_id, keys in wanted.items():
            for key in keys:
                searches[search_id].on_prefix(key, cache[key])
    return [search.result for search in searches]


def find_best_experts(
    dht: DHT, prefix: str, grid_scores: Sequence[Sequence[Sequence[float]]], k_best: int, beam_size: int = 0
) -> list[list[tuple[ExpertEntry, float]]]:
    return run_coroutine(afind_best_experts(dht, prefix, grid_scores, k_best, beam_size))


__all__ = [
    "adeclare_experts",
    "afind_best_experts",
    "aget_expert_replicas",
    "aget_experts",
    "declaration_records",
    "declare_experts",
    "find_best_experts",
    "get_expert_replicas",
    "get_experts",
]
