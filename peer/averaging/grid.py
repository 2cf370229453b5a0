"""The Moshpit grid: pure functions from a peer's grid coordinates to its group key.

Peers live on a virtual d-dimensional grid with `grid_size[i]` cells along dimension i. In round r a
peer averages along dimension j = r mod d: its `GroupKey` names every coordinate except j, so the
peers of one group form a line of the grid. After the round, each member takes its rank in the group
as its new coordinate j, so the next round's groups (along the next dimension) mix members of
different lines. With N = M**d peers on a full grid and no failures, the exact global mean is reached
after d rounds: this is separable averaging over a hypercube (Moshpit SGD, Ryabinin et al. 2021).

A 1-dimensional grid (the default, `grid_size=(1,)`) puts every peer under one key: random groups.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

GroupKey = str  # the DHT key peers of one would-be group declare themselves under


@dataclass(frozen=True)
class MoshpitGrid:
    """The shape of the virtual grid; its methods are pure."""

    grid_size: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        size = tuple(self.grid_size)
        if not size or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in size):
            raise ValueError(
                f"grid_size: expected a non-empty tuple of positive ints, got {self.grid_size!r}"
            )
        object.__setattr__(self, "grid_size", size)

    @property
    def ndim(self) -> int:
        return len(self.grid_size)

    def random_coords(self, rng: random.Random | None = None) -> tuple[int, ...]:
        rng = rng or random.Random()
        return tuple(rng.randrange(m) for m in self.grid_size)

    def check_coords(self, coords: Sequence[int]) -> tuple[int, ...]:
        coords = tuple(coords)
        if len(coords) != self.ndim or any(
            not 0 <= c < m for c, m in zip(coords, self.grid_size, strict=True)
        ):
            raise ValueError(f"coords: {coords!r} is not a cell of a {self.grid_size} grid")
        return coords

    def dimension(self, round_index: int) -> int:
        """The dimension peers average along in round `round_index`."""
        return round_index % self.ndim

    def group_key(self, base: str, coords: Sequence[int], round_index: int) -> GroupKey:
        """`base` + the round's dimension + every coordinate except that dimension."""
        dim = self.dimension(round_index)
        others = ".".join(str(c) for i, c in enumerate(coords) if i != dim)
        return f"{base}.d{dim}.{others}" if others else f"{base}.d{dim}"

    def next_coords(self, coords: Sequence[int], round_index: int, rank_in_group: int) -> tuple[int, ...]:
        """The coordinates after a round in which this peer was member `rank_in_group` of its group."""
        dim = self.dimension(round_index)
        new = list(coords)
        new[dim] = rank_in_group % self.grid_size[dim]
        return tuple(new)


def simulate_round(
    grid: MoshpitGrid,
    values: list[float],
    coords: list[tuple[int, ...]],
    round_index: int,
    *,
    target_group_size: int,
    alive: Sequence[bool] | None = None,
    rng: random.Random | None = None,
) -> None:
    """One Moshpit round in memory (no network, ideal matchmaking): the reference that
    benchmarks/averaging.py prints next to the convergence of networked averagers.

    Live peers sharing a group key are shuffled and cut into groups of at most `target_group_size`;
    each group averages its values exactly and its members take their ranks as new coordinates.
    """
    rng = rng or random.Random(0)
    by_key: dict[str, list[int]] = {}
    for i, c in enumerate(coords):
        if alive is None or alive[i]:
            by_key.setdefault(grid.group_key("", c, round_index), []).append(i)
    for members in by_key.values():
        rng.shuffle(members)
        for start in range(0, len(members), target_group_size):
            group = members[start : start + target_group_size]
            mean = sum(values[i] for i in group) / len(group)
            for rank, i in enumerate(group):
                values[i] = mean
                coords[i] = grid.next_coords(coords[i], round_index, rank)
