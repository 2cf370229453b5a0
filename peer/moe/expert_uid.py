"""Expert uids on a grid: `ffn.3.17` is the expert at coordinates (3, 17) of the grid named `ffn`.

Pure functions, no I/O. A uid is a prefix (one or more dot-separated name parts, none of them all
digits) followed by one or more non-negative integer coordinates. Every proper prefix that ends
right after a coordinate boundary is a *grid prefix*, written with a trailing delimiter:
`ffn.`, `ffn.3.`. The DHT holds one dictionary per grid prefix that maps the next coordinate to an
expert below it, which is what the client's beam search walks.

Patterns describe a whole grid for a server: `ffn.[0:4].[0:16]` (half-open ranges) or
`ffn.3.[0:8]`, or a plain uid.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

UID_DELIMITER = "."
_NAME_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_COORD = re.compile(r"^(0|[1-9][0-9]*)$")
_RANGE = re.compile(r"^\[(\d+):(\d+)\]$")
MAX_UID_LENGTH = 256


@dataclass(frozen=True, order=True)
class ExpertUID:
    """A parsed expert uid: `prefix` (e.g. "ffn") and integer `coords` (e.g. (3, 17))."""

    prefix: str
    coords: tuple[int, ...]

    @classmethod
    def parse(cls, uid: str) -> ExpertUID:
        """Parse "ffn.3.17"; raises ValueError naming what is wrong."""
        if not isinstance(uid, str):
            raise TypeError(f"uid must be a str, got {type(uid).__name__}")
        if not uid or len(uid) > MAX_UID_LENGTH:
            raise ValueError(f"uid must have 1..{MAX_UID_LENGTH} characters, got {len(uid)}")
        parts = uid.split(UID_DELIMITER)
        split = len(parts)
        while split > 0 and _COORD.match(parts[split - 1]):
            split -= 1
        names, coords = parts[:split], parts[split:]
        if not names:
            raise ValueError(f"uid {uid!r} has no name prefix (like 'ffn.')")
        if not coords:
            raise ValueError(f"uid {uid!r} has no integer coordinates (like 'ffn.0.3')")
        for name in names:
            if not _NAME_PART.match(name):
                raise ValueError(f"uid {uid!r} has an invalid name part {name!r}")
        return cls(UID_DELIMITER.join(names), tuple(int(c) for c in coords))

    def __str__(self) -> str:
        return UID_DELIMITER.join([self.prefix, *map(str, self.coords)])

    @property
    def grid_prefixes(self) -> list[str]:
        """Every grid prefix above this expert, root first: ["ffn.", "ffn.3."] for ffn.3.17."""
        return [grid_prefix(self.prefix, self.coords[:depth]) for depth in range(len(self.coords))]


def grid_prefix(prefix: str, coords: tuple[int, ...] = ()) -> str:
    """The DHT key of a grid prefix: grid_prefix("ffn", (3,)) == "ffn.3."."""
    return UID_DELIMITER.join([prefix, *map(str, coords)]) + UID_DELIMITER


def is_valid_uid(uid: str) -> bool:
    try:
        ExpertUID.parse(uid)
    except (ValueError, TypeError):
        return False
    return True


def is_valid_prefix(prefix: str) -> bool:
    """Whether `prefix` is a grid prefix (ends with the delimiter), like "ffn." or "ffn.3."."""
    if not isinstance(prefix, str) or not prefix.endswith(UID_DELIMITER):
        return False
    parts = prefix[:-1].split(UID_DELIMITER)
    names = list(itertools.takewhile(lambda p: not _COORD.match(p), parts))
    rest = parts[len(names) :]
    return bool(names) and all(_NAME_PART.match(n) for n in names) and all(_COORD.match(c) for c in rest)


def parse_pattern(pattern: str) -> tuple[str, list[range]]:
    """Split "ffn.[0:4].3" into ("ffn", [range(0, 4), range(3, 4)])."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("expert pattern must be a non-empty string like 'ffn.[0:4].[0:16]'")
    parts = pattern.split(UID_DELIMITER)
    names: list[str] = []
    while parts and not (_COORD.match(parts[0]) or _RANGE.match(parts[0])):
        names.append(parts.pop(0))
    if not names or not all(_NAME_PART.match(n) for n in names):
        raise ValueError(f"expert pattern {pattern!r} must start with a name like 'ffn'")
    if not parts:
        raise ValueError(f"expert pattern {pattern!r} has no coordinates, e.g. 'ffn.[0:4]'")
    ranges = []
    for part in parts:
        match = _RANGE.match(part)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if stop <= start:
                raise ValueError(f"expert pattern {pattern!r} has an empty range {part}")
            ranges.append(range(start, stop))
        elif _COORD.match(part):
            ranges.append(range(int(part), int(part) + 1))
        else:
            raise ValueError(f"expert pattern {pattern!r} has an invalid coordinate {part!r}")
    return UID_DELIMITER.join(names), ranges


def generate_uids_from_pattern(pattern: str) -> list[str]:
    """Every uid a pattern covers, in grid order: "ffn.[0:2].[0:2]" -> ffn.0.0, ffn.0.1, ..."""
    prefix, ranges = parse_pattern(pattern)
    return [str(ExpertUID(prefix, coords)) for coords in itertools.product(*ranges)]


__all__ = [
    "UID_DELIMITER",
    "ExpertUID",
    "generate_uids_from_pattern",
    "grid_prefix",
    "is_valid_prefix",
    "is_valid_uid",
    "parse_pattern",
]
