"""Access-token issuance: the run's auth mode decides, and every token handed out is logged."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlalchemy.orm import Session

from backend.errors import Conflict, InvalidInput, PermissionDenied
from backend.models import AuthMode, Run, RunStatus, TokenIssuance, User
from backend.services.runs import run_authority
from peer.net.tokens import AccessToken, AccessTokenAuthority, parse_peer_public_key

logger = logging.getLogger(__name__)


def check_may_join(run: Run, user: User) -> None:
    if not user.is_active:
        raise PermissionDenied("This account is deactivated.")
    if run.status == RunStatus.archived.value:
        raise Conflict(f"Run {run.slug!r} is archived and issues no tokens.")
    if run.auth_mode == AuthMode.allowlist.value and user.username not in run.allowlist:
        if user.id != run.owner_id and user.role != "admin":
            raise PermissionDenied(f"User {user.username!r} is not on run {run.slug!r}'s allowlist.")


def issue_access_token(
    session: Session, *, run: Run, user: User, peer_public_key: str, lifetime_s: int, secret_key: str
) -> tuple[AccessToken, AccessTokenAuthority]:
    """Sign a token binding `user`, the peer and `run`; raises if the auth mode refuses the user."""
    try:
        peer_id = parse_peer_public_key(peer_public_key)
    except ValueError as e:
        raise InvalidInput(str(e), {"peer_public_key": str(e)}) from None
    check_may_join(run, user)
    authority = run_authority(run, secret_key=secret_key)
    token = authority.issue(user.username, peer_id, run.slug, lifetime_s)
    session.add(
        TokenIssuance(
            run_id=run.id,
            user_id=user.id,
            peer_id=str(peer_id),
            issued_at=datetime.fromtimestamp(token.issued_at, timezone.utc),
            expires_at=datetime.fromtimestamp(token.expires_at, timezone.utc),
        )
    )
    session.flush()
    logger.info("Issued an access token for run %r to user %r (peer %s)", run.slug, user.username, peer_id)
    return token, authority
