"""API keys in the browser: the plaintext is shown once, right after creation."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backend.api.deps import SessionDep
from backend.errors import InvalidInput
from backend.pages.deps import PageUser, form_text, redirect, render, render_form
from backend.services import api_keys as api_keys_service

router = APIRouter(prefix="/account/keys")


@router.get("")
def keys_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    keys = api_keys_service.list_api_keys(session, user=user)
    return render(request, "keys/index.html", keys=keys, errors={}, created=None)


@router.post("")
async def create_key(request: Request, session: SessionDep, user: PageUser) -> Response:
    form = await request.form()
    try:
        key, plaintext = api_keys_service.create_api_key(session, user=user, name=form_text(form, "name"))
    except InvalidInput as e:
        keys = api_keys_service.list_api_keys(session, user=user)
        return render_form(
            request, "keys/index.html", "keys/_panel.html", 422, keys=keys, errors=e.fields, created=None
        )
    keys = api_keys_service.list_api_keys(session, user=user)
    return render_form(
        request, "keys/index.html", "keys/_panel.html", keys=keys, errors={}, created=(key, plaintext)
    )


@router.post("/{key_id}/revoke")
def revoke_key(request: Request, key_id: int, session: SessionDep, user: PageUser) -> Response:
    api_keys_service.revoke_api_key(session, user=user, key_id=key_id)
    if request.headers.get("hx-request") == "true":
        keys = api_keys_service.list_api_keys(session, user=user)
        return render_form(request, "keys/index.html", "keys/_panel.html", keys=keys, errors={}, created=None)
    return redirect(request, "/account/keys")
