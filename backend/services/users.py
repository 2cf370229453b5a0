"""Accounts: sign-up, password checks with throttling, and deactivation."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.errors import Conflict, InvalidInput, TooManyAttempts
from backend.models import Role, User
from backend.schemas import USERNAME_PATTERN
from backend.security import hash_password, verify_password

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
_EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def validate_new_user(*, email: str, username: str, password: str, role: str) -> dict[str, str]:
    errors = {}
    if not _EMAIL_PATTERN.match(normalize_email(email)):
        errors["email"] = "Enter a valid email address."
    if not re.match(USERNAME_PATTERN, username):
        errors["username"] = "2 to 64 letters, digits, dots, dashes or underscores."
    if len(password) < MIN_PASSWORD_LENGTH:
        errors["password"] = f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if role not in {r.value for r in Role}:
        errors["role"] = "Unknown role."
    return errors


def create_user(session: Session, *, email: str, username: str, password: str, role: str) -> User:
    errors = validate_new_user(email=email, username=username, password=password, role=role)
    if errors:
        raise InvalidInput("The account details are not valid.", errors)
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("An account with this email already exists.", field="email")
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise Conflict("This username is taken.", field="username")
    user = User(email=email, username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    logger.info("Created %s account %r", role, username)
    return user


def get_user_by_username(session: Session, *, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def authenticate(
    session: Session, *, email: str, password: str, max_failures: int, lockout_s: int
) -> User | None:
    """The user when the password is right. After `max_failures` misses in a row the account is
    locked for `lockout_s` seconds (doubling with each further lockout), raising TooManyAttempts."""
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    now = utcnow()
    if user is not None and user.locked_until is not None and user.locked_until > now:
        raise TooManyAttempts(
            "Too many failed logins: this account is locked for a while.",
            retry_after_s=int((user.locked_until - now).total_seconds()) + 1,
        )
    ok = verify_password(user.password_hash if user else None, password)
    if user is None:
        return None
    if ok and user.is_active:
        user.failed_logins = 0
        user.locked_until = None
        session.flush()
        return user
    if ok:  # right password, deactivated account
        return None
    user.failed_logins += 1
    if user.failed_logins >= max_failures:
        lockouts = user.failed_logins - max_failures
        user.locked_until = now + timedelta(seconds=lockout_s * 2 ** min(lockouts, 6))
        logger.warning("Locked account %r after %d failed logins", user.username, user.failed_logins)
    session.flush()
    return None


def set_user_active(session: Session, *, user: User, active: bool) -> None:
    """Deactivating a user stops their logins, API keys and new access tokens at once."""
    user.is_active = active
    session.flush()
    logger.info("%s user %r", "Reactivated" if active else "Deactivated", user.username)
