"""The browser pages (Jinja2 templates in web/templates, htmx forms).

    deps    templates, the signed-in user from the session cookie, form helpers
    auth    sign-up, login (throttled), logout
    runs    the run list, the run page, create/edit/pause/archive, dataset download
    keys    API keys: create (shown once), revoke
    admin   deactivate and reactivate users

Every unsafe request on these routes must carry the CSRF token (`backend.csrf.verify_csrf`).
"""

from fastapi import APIRouter, Depends

from backend.csrf import verify_csrf
from backend.pages import admin, auth, keys, runs

pages_router = APIRouter(dependencies=[Depends(verify_csrf)], include_in_schema=False)
pages_router.include_router(auth.router)
pages_router.include_router(keys.router)
pages_router.include_router(admin.router)
pages_router.include_router(runs.router)

__all__ = ["pages_router"]
