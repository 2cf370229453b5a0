"""The run manifest: the declarative JSON a peer reads when it joins a run.

    {"slug", "name", "protocol_version",
     "recipe": {"name", "config", "package"?},          # a recipe the peer already has (never code)
     "dataset": {"url", "sha256", "format"} | null,
     "target_batch_size", "optimizer", "averaging", "compression",
     "initial_peers": [multiaddr, ...],
     "auth": {"mode": "open" | "token", "authority_public_key", "token_url"},
     "initial_state": {"url", "sha256"} | null}          # a seed: fresh peers start from it

`load_manifest(location)` accepts a run page URL (`http(s)://SITE/runs/<slug>`, read from
`SITE/api/v1/runs/<slug>/manifest`), a direct manifest URL, a `file://` URL or a local path, so a
swarm can run with no site at all. Every failure is a `ManifestError` that says what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import httpx
import pydantic

from peer.errors import PeerError

MANIFEST_PROTOCOL_VERSION = 1
_RUN_PAGE = re.compile(r"^(?P<site>https?://[^/]+(?:/.*?)?)/runs/(?P<slug>[A-Za-z0-9][A-Za-z0-9_-]*)/?$")
MAX_MANIFEST_BYTES = 1024 * 1024


class ManifestError(PeerError):
    """The manifest could not be fetched or is not a usable run description."""


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class RecipeSpec(_Strict):
    name: str = pydantic.Field(min_length=1, max_length=100)
    config: dict[str, Any] = pydantic.Field(default_factory=dict)
    package: str | None = None  # the Python package that provides this recipe, for the error message


class DatasetSpec(_Strict):
    url: str = pydantic.Field(min_length=1)
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    format: str = "text"


class InitialStateSpec(_Strict):
    """A checkpoint (a `model.state_dict()` saved with torch.save) that a run's fresh peers load
    instead of a fresh initialization; see peer.runs.seed."""

    url: str = pydantic.Field(min_length=1)
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")


class AuthSpec(_Strict):
    mode: Literal["open", "token"] = "open"
    authority_public_key: str | None = None
    token_url: str | None = None

    @pydantic.model_validator(mode="after")
    def _token_needs_key(self) -> AuthSpec:
        if self.mode == "token" and not (self.authority_public_key and self.token_url):
            raise ValueError("auth mode 'token' needs authority_public_key and token_url")
        return self


class RunManifest(_Strict):
    slug: str = pydantic.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
    name: str = ""
    protocol_version: int
    recipe: RecipeSpec
    dataset: DatasetSpec | None = None
    target_batch_size: int = pydantic.Field(gt=0)
    optimizer: dict[str, Any] = pydantic.Field(default_factory=dict)
    averaging: dict[str, Any] = pydantic.Field(default_factory=dict)
    compression: dict[str, Any] = pydantic.Field(default_factory=dict)
    initial_peers: list[str] = pydantic.Field(default_factory=list)
    auth: AuthSpec = pydantic.Field(default_factory=AuthSpec)
    status: str = "active"
    initial_state: InitialStateSpec | None = None


def manifest_url(location: str) -> str:
    """Where the manifest of `location` (a run page, manifest URL or path) is read from."""
    match = _RUN_PAGE.match(location.strip())
    if match:
        return f"{match['site']}/api/v1/runs/{match['slug']}/manifest"
    return location.strip()


def parse_manifest(data: bytes | str, source: str = "the manifest") -> RunManifest:
    """Validate manifest JSON; ManifestError naming the first problem."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{source} must be a JSON object, not {type(document).__name__}")
    version = document.get("protocol_version")
    if version != MANIFEST_PROTOCOL_VERSION:
        raise ManifestError(
            f"{source} uses manifest protocol {version!r}, but this hivemind-peer speaks "
            f"{MANIFEST_PROTOCOL_VERSION}; install the hivemind-platform version the run asks for "
            "(pip install -U hivemind-platform)"
        )
    try:
        return RunManifest.model_validate(document)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ManifestError(f"{source} is invalid at {where}: {first['msg']}") from None


def load_manifest(location: str, *, timeout: float = 15.0) -> RunManifest:
    """Fetch and validate the manifest at `location` (see the module docstring)."""
    url = manifest_url(location)
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return parse_manifest(_fetch(url, location, timeout), f"the manifest at {url}")
    path = Path(urlparse(url).path if scheme == "file" else url).expanduser()
    try:
        data = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    except OSError as e:
        raise ManifestError(f"cannot read the manifest file {path}: {e.strerror or e}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest file {path} is larger than {MAX_MANIFEST_BYTES} bytes")
    return parse_manifest(data, f"the manifest file {path}")


def _fetch(url: str, location: str, timeout: float) -> bytes:
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            response = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as e:
        raise ManifestError(
            f"cannot reach the site at {url}: {e}. Check the run URL and your connection, or ask the "
            "organizer for the manifest file"
        ) from None
    if response.status_code == 404:
        raise ManifestError(f"the site has no run at {location} (404); check the run URL")
    if response.status_code >= 400:
        raise ManifestError(f"the site answered {response.status_code} for {url}: {response.text[:200]}")
    if len(response.content) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest at {url} is larger than {MAX_MANIFEST_BYTES} bytes")
    return response.content
