"""Run datasets: download once with a progress bar, check the sha256, cache by hash in the data dir.

`fetch_dataset(spec, data_dir)` returns the path of a verified local copy. A URL may be http(s),
`file://` or a plain path. A download goes to a temporary file first and is renamed into the cache
only when its sha256 matches, so a crash or a bad download never leaves a corrupt cache entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from peer.errors import PeerError
from peer.runs.manifest import DatasetSpec

_CHUNK = 1 << 20


class DatasetError(PeerError):
    """The dataset could not be fetched, or its content does not match the run's sha256."""


def fetch_dataset(spec: DatasetSpec, data_dir: Path, *, show_progress: bool = True) -> Path:
    cache = Path(data_dir).expanduser() / "datasets"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.sha256
    if target.exists() and _sha256_of(target) == spec.sha256:
        return target
    fd, temp_name = tempfile.mkstemp(dir=cache, prefix=".download-")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy_from(spec.url, out, show_progress)
        if digest != spec.sha256:
            raise DatasetError(
                f"the dataset at {spec.url} has sha256 {digest}, but the run expects {spec.sha256}; "
                "the file changed or the manifest is wrong: tell the run's organizer"
            )
        temp.replace(target)
        return target
    finally:
        temp.unlink(missing_ok=True)


def _copy_from(url: str, out, show_progress: bool) -> str:
    digest = hashlib.sha256()
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=30.0) as response:
                if response.status_code >= 400:
                    raise DatasetError(
                        f"downloading the dataset from {url} failed: HTTP {response.status_code}"
                    )
                total = int(response.headers.get("content-length") or 0) or None
                with _progress(show_progress) as progress:
                    task = progress.add_task("dataset", total=total)
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(task, advance=len(chunk))
        except httpx.HTTPError as e:
            raise DatasetError(f"cannot download the dataset from {url}: {e}") from None
        return digest.hexdigest()
    path = Path(urlparse(url).path if scheme == "file" else url).expanduser()
    try:
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
    except OSError as e:
        raise DatasetError(f"cannot read the dataset {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def _progress(enabled: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        disable=not enabled,
        transient=True,
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        shutil.copyfileobj(source, _HashWriter(digest), _CHUNK)
    return digest.hexdigest()


class _HashWriter:
    def __init__(self, digest):
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)
