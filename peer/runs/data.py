"""Run datasets: download once with a progress bar, check the sha256, cache by hash in the data dir.

`fetch_dataset(spec, data_dir)` returns the path of a verified local copy. A URL may be http(s),
`file://` or a plain path. A download goes to a temporary file first and is renamed into the cache
only when its sha256 matches, so a crash or a bad download never leaves a corrupt cache entry.
"""

from __future__ import annotations

from pathlib import Path

from peer.errors import PeerError
from peer.runs.download import fetch_verified
from peer.runs.manifest import DatasetSpec


class DatasetError(PeerError):
    """The dataset could not be fetched, or its content does not match the run's sha256."""


def fetch_dataset(spec: DatasetSpec, data_dir: Path, *, show_progress: bool = True) -> Path:
    """A verified local copy of the run's dataset, downloaded once and cached by sha256."""
    target = Path(data_dir).expanduser() / "datasets" / spec.sha256
    return fetch_verified(
        spec.url, spec.sha256, target, what="dataset", error=DatasetError, show_progress=show_progress
    )
