"""Admin pages: deactivating a user stops their logins, API keys and new access tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from backend.api.deps import SessionDep
from backend.errors import NotFound
from backend.models import User
from backend.pages.deps import PageAdmin, redirect, render
from backend.services import users as users_service

router = APIRouter(prefix="/admin")


@router.get("/users")
def users_page(request: Request, session: SessionDep, admin: PageAdmin) -> Response:
    users = session.scalars(select(User).order_by(User.id)).all()
    return render(request, "admin/users.html", users=users)


@router.post("/users/{user_id}/{action}")
def set_active(
    request: Request, user_id: int, action: str, session: SessionDep, admin: PageAdmin
) -> Response:
    target = session.get(User, user_id)
    if target is None or action not in ("deactivate", "reactivate"):
        raise NotFound("No such user or action.")
    users_service.set_user_active(session, user=target, active=action == "reactivate")
    return redirect(request, "/admin/users")
