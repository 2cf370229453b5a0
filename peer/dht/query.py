"""The iterative Kademlia lookup as a state machine, fed replies and the clock; it does no I/O.

One `ClosestPeersQuery` looks up many target ids at once (a bulk find). The driver loops:

    query = ClosestPeersQuery(targets, seeds, now=now)
    while not (step := query.next(now)).finished:
        for request in step.requests:          # ask request.peer_id about request.keys
            ... later: query.on_success(peer_id, closer_peers_per_key, values_found_per_key)
            ...    or: query.on_failure(peer_id)
        ... wait for a reply or until step.wake_at (the earliest request deadline)
    query.results()                            # per key: nearest peers, value, hops
    query.responders(target)                   # per key: every peer that answered, closest first

**Per key** the query keeps candidates sorted by XOR distance to that key. Each key starts
requests to at most `alpha` (`ALPHA_VALUE` = 3) of its `k` closest live candidates at a time. A
key is finished when its `k` closest candidates that did not fail have all answered about it (or
every candidate has been tried), as in rust-libp2p's `ClosestPeersIter`.

**Sharing requests.** One peer has at most one request in flight. When a peer is asked, the request
names every unfinished key for which that peer is among the key's `k` closest live candidates and
has not yet been asked about it, so one request serves many keys (such piggybacked keys may exceed
`alpha` in flight). A peer can be asked again later about keys it newly became a candidate for.

**Failures and timeouts.** `on_failure`, or a request still unanswered at its deadline (`now +
request_timeout`, checked by `next`), marks the peer failed for the whole query: it is never asked
again and never counts among the nearest. A reply that comes after the deadline is ignored
(`on_success` returns False); the driver should cancel its RPC at the same deadline. The query
never asks peers in `exclude` (ourselves, banned peers); the driver filters the peers it passes.

**Modes.** `QueryMode.CLOSEST` finds the k closest peers. `FIRST_VALUE` finishes a key as soon as
a peer returns a value for it. `LATEST` searches like `CLOSEST` and keeps the value with the latest
expiration. In every mode the result holds the freshest value seen.

**Hops.** A seed is at depth 0 and a peer first learned from a depth-d peer is at depth d+1; a
key's `hops` is 1 + the largest depth among the peers that answered about it: the longest chain of
sequential requests it needed.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from peer.dht.routing import DHTID, K_VALUE
from peer.dht.storage import ValueWithExpiration
from peer.net.identity import PeerID

ALPHA_VALUE = 3
DEFAULT_REQUEST_TIMEOUT = 5.0


class QueryMode(enum.Enum):
    CLOSEST = "closest"  # find the k closest peers of each key
    FIRST_VALUE = "first_value"  # finish a key as soon as any peer returns a value for it
    LATEST = "latest"  # ask all k closest peers; keep the value that expires last


@dataclass(frozen=True)
class QueryRequest:
    """Ask `peer_id` about `keys` (for each: closer peers and the value it holds); answer by `deadline`."""

    peer_id: PeerID
    keys: tuple[DHTID, ...]
    deadline: float


@dataclass(frozen=True)
class QueryStep:
    """What `ClosestPeersQuery.next` wants: new requests, or waiting until `wake_at`, or nothing."""

    requests: tuple[QueryRequest, ...]
    timed_out: tuple[PeerID, ...]  # peers whose requests passed their deadline in this call
    finished: bool
    wake_at: float | None  # the earliest deadline among requests in flight

    @property
    def waiting(self) -> bool:
        return not self.finished and not self.requests


@dataclass(frozen=True)
class LookupResult:
    """The outcome for one key: nearest answering peers (closest first), best value, hops."""

    target: DHTID
    nearest: tuple[PeerID, ...]
    value: ValueWithExpiration | None
    hops: int
    finished: bool


class _Status(enum.Enum):
    NOT_CONTACTED = 0
    WAITING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass
class _Candidate:
    peer_id: PeerID
    distance: int
    depth: int
    status: _Status = _Status.NOT_CONTACTED


class _KeyLookup:
    """The candidates of one key, sorted by distance, and what was found for it."""

    def __init__(self, target: DHTID):
        self.target = target
        self.order: list[tuple[int, PeerID]] = []
        self.candidates: dict[PeerID, _Candidate] = {}
        self.value: ValueWithExpiration | None = None
        self.finished = False
        self.hops = 0
        self.waiting = 0  # candidates with a request about this key in flight

    def add(self, peer_id: PeerID, node_id: DHTID, depth: int) -> None:
        candidate = self.candidates.get(peer_id)
        if candidate is not None:
            candidate.depth = min(candidate.depth, depth)
            return
        distance = node_id.value ^ self.target.value
        self.candidates[peer_id] = _Candidate(peer_id, distance, depth)
        bisect.insort(self.order, (distance, peer_id))

    def live(self, k: int, failed: Collection[PeerID]) -> list[_Candidate]:
        """The k closest candidates that have not failed, closest first."""
        chosen = []
        for _, peer_id in self.order:
            candidate = self.candidates[peer_id]
            if candidate.status is _Status.FAILED or peer_id in failed:
                continue
            chosen.append(candidate)
            if len(chosen) == k:
                break
        return chosen

    def is_converged(self, k: int, failed: Collection[PeerID]) -> bool:
        return all(c.status is _Status.SUCCEEDED for c in self.live(k, failed))

    def set_status(self, peer_id: PeerID, status: _Status) -> None:
        candidate = self.candidates[peer_id]
        self.waiting += (status is _Status.WAITING) - (candidate.status is _Status.WAITING)
        candidate.status = status

    def offer_value(self, value: ValueWithExpiration) -> None:
        if self.value is None or value.expiration_time > self.value.expiration_time:
            self.value = value


class ClosestPeersQuery:
    """A bulk iterative lookup of `targets` (see the module docstring).

    `seeds` are the peers to start from: one collection for every key, or a mapping from each key
    to its own (typically `routing_table.nearest(key)`).
    """

    def __init__(
        self,
        targets: Sequence[DHTID],
        seeds: Iterable[PeerID] | Mapping[DHTID, Iterable[PeerID]],
        *,
        now: float,
        k: int = K_VALUE,
        alpha: int = ALPHA_VALUE,
        mode: QueryMode = QueryMode.CLOSEST,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        exclude: Collection[PeerID] = (),
    ):
        targets = list(targets)
        if not all(isinstance(target, DHTID) for target in targets):
            raise TypeError("targets must be a sequence of DHTIDs")
        for name, number in (("k", k), ("alpha", alpha)):
            if not isinstance(number, int) or number < 1:
                raise ValueError(f"{name} must be a positive int, got {number!r}")
        if not isinstance(mode, QueryMode):
            raise TypeError(f"mode must be a QueryMode, not {type(mode).__name__}")
        if not math.isfinite(request_timeout) or request_timeout <= 0:
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout}")
        self.k, self.alpha, self.mode = k, alpha, mode
        self.request_timeout = request_timeout
        self.started_at = now
        if not isinstance(seeds, Mapping):
            seeds = list(seeds)
        self._exclude = frozenset(exclude)
        self._lookups: dict[DHTID, _KeyLookup] = {target: _KeyLookup(target) for target in targets}
        self._node_ids: dict[PeerID, DHTID] = {}
        self._in_flight: dict[PeerID, QueryRequest] = {}
        self._failed: set[PeerID] = set()
        self.num_requests = self.num_successes = self.num_failures = 0
        for lookup in self._lookups.values():
            key_seeds = seeds.get(lookup.target, ()) if isinstance(seeds, Mapping) else seeds
            for seed in key_seeds:
                if not isinstance(seed, PeerID):
                    raise TypeError(f"seeds must be PeerIDs, not {type(seed).__name__}")
                self._add_candidate(lookup, seed, depth=0)

    # ----- driving -----

    def next(self, now: float) -> QueryStep:
        """Expire overdue requests, then say which peers to ask now (or that we wait, or are done)."""
        timed_out = tuple(peer for peer, request in self._in_flight.items() if request.deadline <= now)
        for peer_id in timed_out:
            self._fail(peer_id)
        unfinished = self._update_finished()
        if not unfinished:
            return QueryStep((), timed_out, True, None)
        live = {lookup.target: lookup.live(self.k, self._failed) for lookup in unfinished}
        chosen = self._choose_peers(unfinished, live)
        askable = {  # per key: its live candidates not yet asked about it
            target: {c.peer_id for c in candidates if c.status is _Status.NOT_CONTACTED}
            for target, candidates in live.items()
        }
        requests = []
        for peer_id in chosen:
            keys = []
            for lookup in unfinished:
                if peer_id in askable[lookup.target]:
                    lookup.set_status(peer_id, _Status.WAITING)
                    keys.append(lookup.target)
            request = QueryRequest(peer_id, tuple(keys), now + self.request_timeout)
            self._in_flight[peer_id] = request
            requests.append(request)
        self.num_requests += len(requests)
        wake_at = min((r.deadline for r in self._in_flight.values()), default=None)
        return QueryStep(tuple(requests), timed_out, False, wake_at)

    def on_success(
        self,
        peer_id: PeerID,
        closer_peers_per_key: Mapping[DHTID, Sequence[PeerID]],
        values_found_per_key: Mapping[DHTID, ValueWithExpiration] | None = None,
    ) -> bool:
        """`peer_id` answered its request; False (and ignored) if it had none in flight (late reply).

        At most `k` closer peers per key are taken; keys the request did not name are ignored.
        """
        request = self._in_flight.pop(peer_id, None)
        if request is None:
            return False
        self.num_successes += 1
        values_found_per_key = values_found_per_key or {}
        for target in request.keys:
            lookup = self._lookups[target]
            candidate = lookup.candidates[peer_id]
            lookup.set_status(peer_id, _Status.SUCCEEDED)
            if lookup.finished:
                continue
            lookup.hops = max(lookup.hops, candidate.depth + 1)
            value = values_found_per_key.get(target)
            if value is not None:
                lookup.offer_value(value)
            for closer in list(closer_peers_per_key.get(target, ()))[: self.k]:
                self._add_candidate(lookup, closer, depth=candidate.depth + 1)
        return True

    def on_failure(self, peer_id: PeerID) -> bool:
        """`peer_id` failed to answer; False if it had no request in flight."""
        if peer_id not in self._in_flight:
            return False
        self._fail(peer_id)
        return True

    # ----- results -----

    @property
    def finished(self) -> bool:
        return not self._update_finished()

    @property
    def in_flight(self) -> tuple[QueryRequest, ...]:
        return tuple(self._in_flight.values())

    def result(self, target: DHTID) -> LookupResult:
        lookup = self._lookups[target]
        nearest = tuple(c.peer_id for c in lookup.live(self.k, self._failed) if c.status is _Status.SUCCEEDED)
        return LookupResult(target, nearest, lookup.value, lookup.hops, lookup.finished)

    def responders(self, target: DHTID) -> tuple[PeerID, ...]:
        """Every peer that answered about `target`, closest first: the lookup's path to it."""
        lookup = self._lookups[target]
        return tuple(
            peer_id for _, peer_id in lookup.order if lookup.candidates[peer_id].status is _Status.SUCCEEDED
        )

    def results(self) -> dict[DHTID, LookupResult]:
        return {target: self.result(target) for target in self._lookups}

    # ----- internals -----

    def _add_candidate(self, lookup: _KeyLookup, peer_id: PeerID, depth: int) -> None:
        if not isinstance(peer_id, PeerID) or peer_id in self._exclude or peer_id in self._failed:
            return
        node_id = self._node_ids.get(peer_id)
        if node_id is None:
            node_id = self._node_ids[peer_id] = DHTID.from_peer_id(peer_id)
        lookup.add(peer_id, node_id, depth)

    def _fail(self, peer_id: PeerID) -> None:
        request = self._in_flight.pop(peer_id)
        self.num_failures += 1
        self._failed.add(peer_id)
        for target in request.keys:
            self._lookups[target].set_status(peer_id, _Status.FAILED)

    def _update_finished(self) -> list[_KeyLookup]:
        """Mark keys that are done; returns the unfinished ones."""
        unfinished = []
        for lookup in self._lookups.values():
            if not lookup.finished:
                found = self.mode is QueryMode.FIRST_VALUE and lookup.value is not None
                lookup.finished = found or lookup.is_converged(self.k, self._failed)
            if not lookup.finished:
                unfinished.append(lookup)
        return unfinished

    def _choose_peers(
        self, unfinished: list[_KeyLookup], live: dict[DHTID, list[_Candidate]]
    ) -> list[PeerID]:
        """For each key, up to `alpha` minus its in-flight count of its closest uncontacted peers."""
        chosen: dict[PeerID, None] = {}
        for lookup in unfinished:
            slots = self.alpha - lookup.waiting
            for candidate in live[lookup.target]:
                if slots <= 0:
                    break
                if candidate.status is not _Status.NOT_CONTACTED or candidate.peer_id in self._in_flight:
                    continue
                chosen[candidate.peer_id] = None
                slots -= 1
        return list(chosen)
