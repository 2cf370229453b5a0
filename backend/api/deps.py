"""Dependencies shared by the API and the pages, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.db import read_only
from backend.errors import AuthenticationRequired, PermissionDenied
from backend.models import Run, User
from backend.services import api_keys as api_keys_service
from backend.services import runs as runs_service
from backend.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_secret_key(request: Request) -> str:
    return request.app.state.secret_key


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_db(request: Request) -> Iterator[Session]:
    """A session per request: committed when the handler returns, rolled back if it raises."""
    with request.app.state.session_factory() as session:
        if request.method in _READ_METHODS:
            read_only(session)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
SecretKeyDep = Annotated[str, Depends(get_secret_key)]
SessionDep = Annotated[Session, Depends(get_db, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key created on the site (hms_...).")


def get_api_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise AuthenticationRequired("Send an API key as `Authorization: Bearer hms_...`.")
    user = api_keys_service.user_for_api_key(session, plaintext=credentials.credentials)
    if user is None:
        raise AuthenticationRequired("The API key is unknown, revoked, or its account is deactivated.")
    return user


ApiUser = Annotated[User, Depends(get_api_user)]


def get_api_organizer(user: ApiUser) -> User:
    if not user.can_organize:
        raise PermissionDenied("This needs an organizer's API key.")
    return user


Organizer = Annotated[User, Depends(get_api_organizer)]


def get_run(session: SessionDep, slug: str) -> Run:
    return runs_service.get_run(session, slug=slug)


RunDep = Annotated[Run, Depends(get_run)]


def get_managed_run(run: RunDep, user: Organizer) -> Run:
    """The run named in the path, when the API key's user may change it (ownership check)."""
    runs_service.check_can_manage(run, user)
    return run


ManagedRun = Annotated[Run, Depends(get_managed_run)]
