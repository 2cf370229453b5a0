"""Request and response bodies, one schema per use (`RunCreate` in, `RunPublic` out, ...)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from backend.models import AuthMode, Role, RunStatus
from peer.errors import MultiaddrError
from peer.net.multiaddr import Multiaddr
from peer.runs.manifest import ManifestError
from peer.runs.training import check_section

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{2,64}$"
RESERVED_SLUGS = {"new", "api", "static", "admin"}
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: Literal["ok"]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    config: dict[str, Any] = {}


class DatasetURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    format: str = Field(default="", max_length=32)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class RunSettings(BaseModel):
    """The fields an organizer sets on a run (everything except its slug)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    recipe: Recipe
    target_batch_size: int = Field(ge=1, le=1_000_000_000)
    optimizer: dict[str, Any] = {}
    averaging: dict[str, Any] = {}
    compression: dict[str, Any] = {}
    auth_mode: AuthMode = AuthMode.volunteers
    allowlist: list[str] = Field(default=[], max_length=1000)
    initial_peers: list[str] = Field(default=[], max_length=100)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("optimizer", "averaging", "compression")
    @classmethod
    def _peers_accept(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The peers' own parser checks the section now, so a typo is refused here, not at join."""
        try:
            check_section(str(info.field_name), value)
        except ManifestError as e:
            raise ValueError(str(e).replace("the manifest's ", "the ")) from None
        return value

    @field_validator("allowlist")
    @classmethod
    def _usernames(cls, value: list[str]) -> list[str]:
        for username in value:
            if not re.match(USERNAME_PATTERN, username):
                raise ValueError(f"{username!r} is not a valid username")
        return sorted(set(value))

    @field_validator("initial_peers")
    @classmethod
    def _multiaddrs(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                Multiaddr.parse(address)
            except (MultiaddrError, ValueError) as e:
                raise ValueError(f"{address!r} is not a multiaddr: {e}") from None
        return value


class RunCreate(RunSettings):
    slug: str = Field(pattern=SLUG_PATTERN)
    dataset: DatasetURL | None = None

    @field_validator("slug")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_SLUGS:
            raise ValueError(f"{value!r} is reserved")
        return value


class DatasetPublic(BaseModel):
    kind: Literal["upload", "url"]
    url: str
    sha256: str | None
    format: str
    size_bytes: int | None
    filename: str | None


class RunSummary(BaseModel):
    slug: str
    name: str
    status: RunStatus
    owner: str
    auth_mode: AuthMode
    url: str
    created_at: datetime


class RunPublic(RunSummary):
    description: str
    description_html: str
    recipe: Recipe
    target_batch_size: int
    optimizer: dict[str, Any]
    averaging: dict[str, Any]
    compression: dict[str, Any]
    initial_peers: list[str]
    dataset: DatasetPublic | None
    join_command: str
    manifest_url: str
    authority_public_key: str


class AccessTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peer_public_key: str = Field(
        min_length=1,
        max_length=256,
        description="The volunteer peer's base58 PeerID (12D3KooW...), or the standard base64 of its "
        "libp2p-serialized Ed25519 public key.",
    )


class AccessTokenResponse(BaseModel):
    token: str = Field(description="The signed access token, base64url without padding.")
    expires_at: int = Field(description="Unix seconds.")
    authority_public_key: str = Field(description="Base64 of the run authority's raw 32-byte key.")
    username: str
    peer_id: str


class UserPublic(BaseModel):
    username: str
    role: Role


# ---- the swarm monitor's data: REST, the live WebSocket and the pages --------------------------


class LiveSummary(BaseModel):
    """The run right now, as the monitor last stored it."""

    peers_online: int
    samples_per_second: float = Field(description="The swarm's speed (peers whose claims passed the checks).")
    epoch: int
    eta_s: float | None = Field(description="Seconds to the next epoch; null when nobody trains.")
    loss: float | None
    total_samples: int = Field(
        description="Samples the swarm trained, as counted by the monitor's checks (the leaderboard "
        "shows who they are credited to; a peer with no known owner counts here only)."
    )
    updated_at: datetime | None = Field(description="When the monitor stored this; null before it did.")


class MetricPoint(BaseModel):
    """One point of the run's time series (a mean of `weight` raw points once downsampled)."""

    t: float = Field(description="Unix seconds (a bucket's start once downsampled).")
    peers: float
    samples_per_second: float
    epoch: int
    loss: float | None
    total_samples: int
    resolution_s: int = Field(description="0 for a raw point, else the bucket size.")


class MetricsPage(BaseModel):
    run: str
    since: float
    points: list[MetricPoint] = Field(description="Oldest first.")
    truncated: bool = Field(description="More points follow: ask again with since=next_since.")
    next_since: float | None


class SwarmPeerPublic(BaseModel):
    peer_id: str
    short_id: str
    user: str | None = Field(description="Who is credited: the user the site issued the peer's token to.")
    declared_username: str | None = Field(description="The username the peer declares (not trusted).")
    device: str
    reachability: str = Field(description="direct, relayed or client.")
    version: str
    client_mode: bool
    epoch: int
    samples_per_second: float
    loss: float | None
    total_samples: int = Field(description="As the peer claims it (all its epochs).")
    credited_samples: int
    time_online_s: float
    first_seen: datetime
    last_seen: datetime
    online: bool
    flagged: bool
    flag_reason: str | None


class LeaderboardRow(BaseModel):
    rank: int
    name: str = Field(description="The username, or the short PeerID of a peer without a token.")
    user: str | None
    peer_id: str | None
    samples: int
    time_online_s: float
    recent_score: float = Field(description="Credited samples decaying with the half-life, as of now.")
    rejected_samples: int
    flagged_claims: int
    updated_at: datetime


class ExpertPublic(BaseModel):
    uid: str
    live: bool
    peer_id: str | None = Field(description="The server that refreshed its declaration last.")
    replicas: int
    last_seen: datetime | None


class ExpertsPublic(BaseModel):
    items: list[ExpertPublic]
    total: int
    live: int


class LiveUpdate(BaseModel):
    """The message of `WS /api/v1/runs/{slug}/live` (and the data of the run page without JS)."""

    type: Literal["update"] = "update"
    run: str
    version: int = Field(description="Grows with every poll the monitor stores.")
    summary: LiveSummary
    point: MetricPoint | None = Field(description="The newest point of the time series.")
    peers: list[SwarmPeerPublic] = Field(description="Online peers first, then the most recently seen.")
    leaderboard: list[LeaderboardRow] = Field(description="The top 20 by samples.")


class RunTotals(BaseModel):
    """A run's totals for lists of runs (the home page)."""

    peers_online: int
    samples_per_second: float
    epoch: int
    loss: float | None
    total_samples: int
    contributors: int
    updated_at: datetime | None
