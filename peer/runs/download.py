"""Verified downloads for a run: a file named by URL and sha256, fetched once into a cache.

`fetch_verified(url, sha256, target, what=..., error=...)` returns `target` holding exactly the bytes
whose sha256 the manifest names. A URL may be http(s), `file://` or a plain path. The bytes go to a
temporary file next to `target` first (with a progress bar for downloads) and are renamed into place
only when the hash matches, so a crash or a bad download never leaves a corrupt cache entry. The run's
dataset (`peer.runs.data`) and initial state (`peer.runs.seed`) both come through here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from peer.errors import PeerError

CHUNK = 1 << 20


def fetch_verified(
    url: str,
    sha256: str,
    target: Path,
    *,
    what: str,
    error: type[PeerError],
    show_progress: bool = True,
) -> Path:
    """`target`, holding the bytes at `url` whose sha256 is `sha256` (see the module docstring).
    Failures raise `error` with a message naming `what` was fetched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and sha256_of(target) == sha256:
        return target
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".download-", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy_from(url, out, what=what, error=error, show_progress=show_progress)
        if digest != sha256:
            raise error(
                f"the {what} at {url} has sha256 {digest}, but the run expects {sha256}; "
                "the file changed or the manifest is wrong: tell the run's organizer"
            )
        temp.replace(target)
        return target
    finally:
        temp.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_from(url: str, out: IO[bytes], *, what: str, error: type[PeerError], show_progress: bool) -> str:
    digest = hashlib.sha256()
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=30.0) as response:
                if response.status_code >= 400:
                    raise error(f"downloading the {what} from {url} failed: HTTP {response.status_code}")
                total = int(response.headers.get("content-length") or 0) or None
                with _progress(show_progress) as progress:
                    task = progress.add_task(what, total=total)
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(task, advance=len(chunk))
        except httpx.HTTPError as e:
            raise error(f"cannot download the {what} from {url}: {e}") from None
        return digest.hexdigest()
    path = Path(urlparse(url).path if scheme == "file" else url).expanduser()
    try:
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
    except OSError as e:
        raise error(f"cannot read the {what} {path}: {e.strerror or e}") from None
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
