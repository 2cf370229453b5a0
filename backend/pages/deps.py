"""What the page routes share: templates, the signed-in user, redirects that understand htmx."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from backend.api.deps import SessionDep
from backend.errors import AuthenticationRequired, PermissionDenied
from backend.models import User
from backend.paths import web_dir
from backend.services import sessions as sessions_service

SESSION_COOKIE = "hms_session"
templates = Jinja2Templates(directory=str(web_dir() / "templates"))


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, as templates see it (safe to use after the session closes)."""

    id: int
    username: str
    role: str
    can_organize: bool


def get_page_user(request: Request, session: SessionDep) -> User | None:
    user = sessions_service.user_for_session(session, token=request.cookies.get(SESSION_COOKIE))
    if user is not None:
        request.state.viewer = Viewer(user.id, user.username, user.role, user.can_organize)
    return user


MaybeUser = Annotated[User | None, Depends(get_page_user)]


def require_user(user: MaybeUser) -> User:
    if user is None:
        raise AuthenticationRequired("Log in to see this page.")
    return user


PageUser = Annotated[User, Depends(require_user)]


def require_organizer(user: PageUser) -> User:
    if not user.can_organize:
        raise PermissionDenied("Only organizers can do this.")
    return user


PageOrganizer = Annotated[User, Depends(require_organizer)]


def require_admin(user: PageUser) -> User:
    if user.role != "admin":
        raise PermissionDenied("Only admins can do this.")
    return user


PageAdmin = Annotated[User, Depends(require_admin)]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("user", getattr(request.state, "viewer", None))
    context["csrf_token"] = getattr(request.state, "csrf_token", "")
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def render_form(
    request: Request, page: str, partial: str, status_code: int = 200, **context: Any
) -> Response:
    """The form alone for htmx (it swaps it in place), the whole page for a plain browser."""
    is_htmx = request.headers.get("hx-request") == "true"
    return render(request, partial if is_htmx else page, status_code, **context)


def redirect(request: Request, url: str) -> Response:
    """A redirect after a successful form post, for htmx (HX-Redirect) and plain browsers alike."""
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def render_error_page(request: Request, status_code: int, message: str) -> Response:
    if status_code == 401 and request.method == "GET":
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return render(request, "error.html", status_code=status_code, message=message)


def form_text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default
