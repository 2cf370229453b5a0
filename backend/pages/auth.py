"""Sign-up, login and logout. Failed logins are throttled by `services.users.authenticate`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backend.api.deps import SessionDep, SettingsDep
from backend.errors import Conflict, InvalidInput, TooManyAttempts
from backend.models import Role
from backend.pages.deps import SESSION_COOKIE, MaybeUser, form_text, redirect, render, render_form
from backend.services import sessions as sessions_service
from backend.services import users as users_service

router = APIRouter()
SIGNUP_ROLES = (Role.volunteer.value, Role.organizer.value)


def _safe_next(url: str) -> str:
    return url if url.startswith("/") and not url.startswith("//") else "/"


def _log_in(request: Request, response: Response, token: str, settings) -> Response:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_lifetime_s,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
    )
    return response


@router.get("/signup")
def signup_page(request: Request, user: MaybeUser) -> Response:
    return render(request, "auth/signup.html", form={"role": "volunteer"}, errors={})


@router.post("/signup")
async def signup(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    form = await request.form()
    values = {name: form_text(form, name) for name in ("email", "username", "role")}
    password = form_text(form, "password")
    errors = users_service.validate_new_user(password=password, **values)
    if values["role"] not in SIGNUP_ROLES:
        errors["role"] = "Choose volunteer or organizer."
    if not errors:
        try:
            user = users_service.create_user(session, password=password, **values)
        except InvalidInput as e:
            errors = e.fields
        except Conflict as e:
            errors = {e.field or "email": e.message}
    if errors:
        return render_form(
            request, "auth/signup.html", "auth/_signup_form.html", 422, form=values, errors=errors
        )
    token = sessions_service.start_session(session, user=user, lifetime_s=settings.session_lifetime_s)
    return _log_in(request, redirect(request, "/"), token, settings)


@router.get("/login")
def login_page(request: Request, user: MaybeUser, next: str = "/") -> Response:
    return render(request, "auth/login.html", form={"email": ""}, errors={}, next=_safe_next(next))


@router.post("/login")
async def login(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    form = await request.form()
    email, next_url = form_text(form, "email"), _safe_next(form_text(form, "next", "/"))
    try:
        user = users_service.authenticate(
            session,
            email=email,
            password=form_text(form, "password"),
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
        )
        error = None if user else "Wrong email or password."
        status = 422
    except TooManyAttempts as e:
        user, error, status = None, e.message, 429
    if user is None:
        session.commit()  # keep the failure count even though we answer with an error
        context = {"form": {"email": email}, "errors": {"password": error}, "next": next_url}
        return render_form(request, "auth/login.html", "auth/_login_form.html", status, **context)
    token = sessions_service.start_session(session, user=user, lifetime_s=settings.session_lifetime_s)
    return _log_in(request, redirect(request, next_url), token, settings)


@router.post("/logout")
def logout(request: Request, session: SessionDep) -> Response:
    sessions_service.end_session(session, token=request.cookies.get(SESSION_COOKIE))
    response = redirect(request, "/")
    response.delete_cookie(SESSION_COOKIE)
    return response
