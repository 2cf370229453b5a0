"""API keys: shown once at creation, stored as a sha256 hash, revocable."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.errors import InvalidInput, NotFound
from backend.models import ApiKey, User
from backend.security import API_KEY_PREFIX, new_api_key, sha256_hex

logger = logging.getLogger(__name__)


def create_api_key(session: Session, *, user: User, name: str) -> tuple[ApiKey, str]:
    """The new key's row and its plaintext, which is never stored and cannot be shown again."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("The key needs a name.", {"name": "Give the key a name of 1 to 100 characters."})
    plaintext = new_api_key()
    key = ApiKey(user=user, name=name, prefix=plaintext[:12], key_hash=sha256_hex(plaintext))
    session.add(key)
    session.flush()
    logger.info("User %r created API key %s (%r)", user.username, key.prefix, name)
    return key, plaintext


def user_for_api_key(session: Session, *, plaintext: str) -> User | None:
    """The active owner of an unrevoked key, or None."""
    if not plaintext.startswith(API_KEY_PREFIX) or len(plaintext) > 128:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == sha256_hex(plaintext)))
    if key is None or key.revoked_at is not None or not key.user.is_active:
        return None
    key.last_used_at = utcnow()
    session.flush()
    return key.user


def list_api_keys(session: Session, *, user: User) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id.desc())))


def revoke_api_key(session: Session, *, user: User, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id:
        raise NotFound("No such API key.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
        logger.info("User %r revoked API key %s", user.username, key.prefix)
    return key
