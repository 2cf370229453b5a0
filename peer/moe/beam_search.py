"""Exact top-k search over a sparsely populated expert grid: a pure state machine, no I/O.

The gating network gives each grid dimension `d` a score per coordinate, `grid_scores[d][i]`. An
expert's score is the sum of its coordinates' scores: `score(ffn.3.17) = s[0][3] + s[1][17]`. Only
*declared* experts count, and the grid is known only through the DHT: the dictionary under a grid
prefix (`ffn.`, `ffn.3.`) maps each next coordinate that has a live expert below it to one of them.

`ExpertBeamSearch` is a best-first search. Every open prefix has an upper bound: its score so far plus
the best possible score of the remaining dimensions. The frontier is a max-heap on that bound; an
expert (a complete uid, whose score is exact) reaches the top only when no open prefix can beat it,
so the experts come out in exact score order. Each round expands up to `beam_size` of the best open
prefixes at once, so a driver fetches them in one bulk DHT lookup:

    search = ExpertBeamSearch("ffn", scores, k_best=4)
    while not search.done:
        keys = search.next_prefixes()              # e.g. ["ffn."], then ["ffn.3.", "ffn.1."], ...
        for key in keys:
            search.on_prefix(key, successors_from_dht[key])   # {coordinate: ExpertEntry} or None
    search.result                                 # up to k_best (ExpertEntry, score), best first
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from peer.moe.expert_uid import UID_DELIMITER, grid_prefix


@dataclass(frozen=True)
class ExpertEntry:
    """A live expert as declared in the DHT: its uid and where its server is."""

    uid: str
    peer_id: str
    maddrs: tuple[str, ...] = ()


@dataclass(order=True)
class _Node:
    neg_bound: float
    tie: int
    coords: tuple[int, ...]
    score: float
    entry: ExpertEntry | None  # set for complete uids


class ExpertBeamSearch:
    """Finds the `k_best` declared experts with the highest additive grid scores (see module docs)."""

    def __init__(self, prefix: str, grid_scores: Sequence[Sequence[float]], k_best: int, beam_size: int = 0):
        if k_best < 1:
            raise ValueError(f"k_best must be positive, got {k_best}")
        if not grid_scores or any(len(dim) == 0 for dim in grid_scores):
            raise ValueError("grid_scores must have at least one dimension, each with at least one score")
        self.prefix = prefix.rstrip(UID_DELIMITER)
        self.scores = [[float(s) for s in dim] for dim in grid_scores]
        if any(not math.isfinite(s) for dim in self.scores for s in dim):
            raise ValueError("grid_scores must be finite")
        self.k_best = k_best
        self.beam_size = beam_size or k_best
        self.ndims = len(self.scores)
        self._best_rest = [sum(max(dim) for dim in self.scores[d:]) for d in range(self.ndims + 1)]
        self._counter = itertools.count()
        self._heap: list[_Node] = []
        self._pending: dict[str, _Node] = {}
        self.result: list[tuple[ExpertEntry, float]] = []
        self._push((), 0.0, None)

    @property
    def done(self) -> bool:
        return not self._pending and (len(self.result) >= self.k_best or not self._heap)

    def _push(self, coords: tuple[int, ...], score: float, entry: ExpertEntry | None) -> None:
        bound = score + self._best_rest[len(coords)]
        heapq.heappush(self._heap, _Node(-bound, next(self._counter), coords, score, entry))

    def _emit_complete(self) -> None:
        while self._heap and self._heap[0].entry is not None and len(self.result) < self.k_best:
            node = heapq.heappop(self._heap)
            assert node.entry is not None
            self.result.append((node.entry, node.score))

    def next_prefixes(self) -> list[str]:
        """The grid prefixes to fetch next (empty when done or while replies are pending)."""
        if self._pending:
            return []
        self._emit_complete()
        if len(self.result) >= self.k_best:
            return []
        while self._heap and self._heap[0].entry is None and len(self._pending) < self.beam_size:
            node = heapq.heappop(self._heap)
            self._pending[grid_prefix(self.prefix, node.coords)] = node
        return list(self._pending)

    def on_prefix(self, key: str, successors: Mapping[int, ExpertEntry] | None) -> None:
        """Feed what the DHT holds under a requested prefix: next coordinate -> an expert below it."""
        node = self._pending.pop(key, None)
        if node is None:
            raise ValueError(f"prefix {key!r} was not requested")
        depth = len(node.coords)
        dim_scores = self.scores[depth]
        for coord, entry in (successors or {}).items():
            if not isinstance(coord, int) or not 0 <= coord < len(dim_scores):
                continue  # a coordinate outside the gating network's grid
            coords = (*node.coords, coord)
            score = node.score + dim_scores[coord]
            if depth + 1 == self.ndims:
                if entry.uid != UID_DELIMITER.join([self.prefix, *map(str, coords)]):
                    continue  # a malformed declaration
                self._push(coords, score, entry)
            else:
                self._push(coords, score, None)
        if not self._pending:
            self._emit_complete()


def brute_force_top_k(
    grid_scores: Sequence[Sequence[float]], declared: Mapping[tuple[int, ...], ExpertEntry], k_best: int
) -> list[tuple[ExpertEntry, float]]:
    """The reference answer: score every declared expert and sort (used by tests and as a fallback)."""
    scored = [
        (entry, sum(float(grid_scores[d][c]) for d, c in enumerate(coords)))
        for coords, entry in declared.items()
    ]
    scored.sort(key=lambda pair: -pair[1])
    return scored[:k_best]


__all__ = ["ExpertBeamSearch", "ExpertEntry", "brute_force_top_k"]
