"""Browser sessions: a random cookie value whose sha256 is stored with an expiry."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.models import User, UserSession
from backend.security import new_session_token, sha256_hex


def start_session(session: Session, *, user: User, lifetime_s: int) -> str:
    """Store a new session for `user`; returns the cookie value (only its hash is stored)."""
    token = new_session_token()
    now = utcnow()
    session.execute(delete(UserSession).where(UserSession.expires_at < now))
    session.add(
        UserSession(token_hash=sha256_hex(token), user=user, expires_at=now + timedelta(seconds=lifetime_s))
    )
    session.flush()
    return token


def user_for_session(session: Session, *, token: str | None) -> User | None:
    if not token or len(token) > 128:
        return None
    row = session.scalar(select(UserSession).where(UserSession.token_hash == sha256_hex(token)))
    if row is None or row.expires_at < utcnow() or not row.user.is_active:
        return None
    return row.user


def end_session(session: Session, *, token: str | None) -> None:
    if token:
        session.execute(delete(UserSession).where(UserSession.token_hash == sha256_hex(token)))
        session.flush()
