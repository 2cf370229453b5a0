"""Settings: the environment and .env, weak secrets refused, a generated secret stored and logged."""

from __future__ import annotations

import logging
import stat

import pytest
from pydantic import ValidationError

from backend.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "HIVEMIND_SITE_SECRET_KEY", "HIVEMIND_SITE_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("secret", ["changethis", "secret", "short-but-random-1234", "a" * 40])
def test_weak_secret_keys_are_refused(secret):
    with pytest.raises(ValidationError, match="too weak"):
        Settings(secret_key=secret)


def test_reads_the_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "HIVEMIND_SITE_PUBLIC_URL=https://site.example.org/\nHIVEMIND_SITE_TOKEN_LIFETIME_S=600\n"
    )
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.public_url == "https://site.example.org" and settings.secure_cookies
    assert settings.token_lifetime_s == 600


def test_defaults():
    settings = Settings()
    assert settings.database_url == "sqlite:///./hivemind-site.db"
    assert settings.token_lifetime_s == 6 * 3600


def test_missing_secret_is_generated_stored_and_logged(tmp_path, caplog):
    settings = Settings(secret_key_file=tmp_path / "site.secret")
    with caplog.at_level(logging.WARNING, logger="backend.settings"):
        first = settings.resolved_secret_key()
    assert "generated one and stored it" in caplog.text
    path = tmp_path / "site.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(secret_key_file=path).resolved_secret_key() == first and len(first) >= 32


def test_configured_secret_wins(tmp_path):
    secret = "Zx9-" + "q8Lm2Vb7Nc4Xa1Sd" * 3
    settings = Settings(secret_key=secret, secret_key_file=tmp_path / "never")
    assert settings.resolved_secret_key() == secret and not (tmp_path / "never").exists()
