"""POST /api/v1/runs/{slug}/access-tokens: a volunteer's API key buys a signed access token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.api.deps import ApiUser, RunDep, SecretKeyDep, SessionDep, SettingsDep
from backend.schemas import AccessTokenRequest, AccessTokenResponse, ErrorResponse
from backend.services import tokens as tokens_service

router = APIRouter(prefix="/runs", tags=["access tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422)
}


@router.post("/{slug}/access-tokens", response_model=AccessTokenResponse, responses=_ERRORS)
def issue_access_token(
    body: AccessTokenRequest,
    run: RunDep,
    user: ApiUser,
    session: SessionDep,
    settings: SettingsDep,
    secret_key: SecretKeyDep,
) -> AccessTokenResponse:
    """Sign a token for the caller's peer if the run's auth mode admits the caller.

    Open runs need no token, but one is still issued to any valid API key.
    """
    token, authority = tokens_service.issue_access_token(
        session,
        run=run,
        user=user,
        peer_public_key=body.peer_public_key,
        lifetime_s=settings.token_lifetime_s,
        secret_key=secret_key,
    )
    return AccessTokenResponse(
        token=token.to_text(),
        expires_at=token.expires_at,
        authority_public_key=authority.public_key_text(),
        username=token.username,
        peer_id=str(token.peer_id),
    )
