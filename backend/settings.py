"""Site settings, read from the environment or a `.env` file (pydantic-settings).

Every variable is prefixed `HIVEMIND_SITE_`, except `DATABASE_URL`, which is also read bare. With no
secret key configured, the first run generates one, stores it in `secret_key_file` (mode 0600) and
logs that it did; weak or well-known secrets are refused.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

_WEAK_SECRETS = {"changethis", "changeme", "secret", "password", "dev", "development", "test", "insecure"}
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HIVEMIND_SITE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite:///./hivemind-site.db",
        validation_alias=AliasChoices("DATABASE_URL", "HIVEMIND_SITE_DATABASE_URL", "database_url"),
    )
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("./hivemind-site.secret")
    public_url: str = "http://127.0.0.1:8000"
    token_lifetime_s: int = Field(default=6 * 3600, ge=60, le=30 * 24 * 3600)
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    max_form_bytes: int = Field(default=1024 * 1024, ge=16 * 1024)
    upload_dir: Path = Path("./hivemind-site-uploads")
    session_lifetime_s: int = Field(default=14 * 24 * 3600, ge=300)
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_s: int = Field(default=15 * 60, ge=1)

    # the swarm monitor (backend.monitor); see docs/site.md for what each rule means
    monitor_enabled: bool = True  # run the monitor inside `serve` (off: run `hivemind-site monitor`)
    monitor_interval_s: float = Field(default=10.0, ge=0.5, le=3600)
    monitor_poll_timeout_s: float = Field(default=30.0, ge=1, le=3600)
    monitor_offline_after_intervals: int = Field(default=3, ge=1, le=1000)
    # ... and never sooner than this: a peer publishes nothing while it averages (up to its timeout)
    monitor_offline_min_s: float = Field(default=30.0, ge=0)
    monitor_identity_dir: Path = Path("./hivemind-site-monitor")  # one DHT key per run (mode 0600)
    monitor_retention_raw_s: int = Field(default=3600, ge=60)  # raw points, then 1-minute means
    monitor_retention_minute_s: int = Field(default=24 * 3600, ge=3600)  # then 1-hour means
    monitor_retention_hour_s: int = Field(default=30 * 24 * 3600, ge=24 * 3600)  # then 1-day means
    leaderboard_half_life_s: float = Field(default=7 * 24 * 3600, ge=60)  # of the recent score
    sanity_tolerance: float = Field(default=4.0, ge=1.0, le=1000)
    sanity_max_samples_per_second: float = Field(default=1e6, gt=0)  # per peer
    # checkpoints (backend.checkpoints): <checkpoint_dir>/<run slug>/<id>.pt with a JSON sidecar
    checkpoint_dir: Path = Path("./hivemind-site-checkpoints")
    checkpoint_period_s: float = Field(default=600.0, ge=1.0)  # between two saves of a run's state
    checkpoint_keep: int = Field(default=5, ge=1, le=10_000)  # swarm checkpoints kept per run
    live_poll_interval_s: float = Field(default=1.0, ge=0.05, le=60)  # the WebSocket's database poll

    @field_validator("secret_key")
    @classmethod
    def _refuse_weak_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        if secret.lower() in _WEAK_SECRETS or len(secret) < MIN_SECRET_LENGTH or len(set(secret)) < 8:
            raise ValueError(
                f"HIVEMIND_SITE_SECRET_KEY is too weak: use at least {MIN_SECRET_LENGTH} random characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`), or unset it to "
                "let the site generate one"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _retention_tiers_grow(self) -> Settings:
        if not self.monitor_retention_raw_s < self.monitor_retention_minute_s < self.monitor_retention_hour_s:
            raise ValueError(
                "monitor retention must grow: monitor_retention_raw_s < monitor_retention_minute_s < "
                "monitor_retention_hour_s"
            )
        return self

    def resolved_secret_key(self) -> str:
        """The configured secret key, or the stored generated one (generating it on first use)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.secret_key_file.expanduser()
        if path.exists():
            secret = path.read_text().strip()
            if len(secret) >= MIN_SECRET_LENGTH:
                return secret
            raise ValueError(f"the secret key stored in {path} is too short; delete the file or fix it")
        secret = secrets.token_urlsafe(48)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        logger.warning(
            "No secret key was configured: generated one and stored it in %s (keep that file; the run "
            "authority keys are encrypted with it)",
            path,
        )
        return secret

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")
