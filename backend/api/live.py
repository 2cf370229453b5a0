"""WS /api/v1/runs/{slug}/live: a `LiveUpdate` JSON message whenever the run's stored state changes.

The socket polls the database (one small query every `live_poll_interval_s`) for the version of the
run's monitor status, so it works the same with the monitor inside the site or in its own process.
It sends the current view right after connecting, then one message per stored poll. Messages are
built once per (run, version) and shared by every socket of the process. Clients send nothing; an
unknown run is refused with a 404 JSON error (or close code 4404 where the server cannot send one).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from backend.db import read_only
from backend.models import Run
from backend.services import swarm as swarm_service

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/runs", tags=["swarm"])
NOT_FOUND_CLOSE_CODE = 4404


def get_session_factory(websocket: WebSocket) -> sessionmaker[Session]:
    return websocket.app.state.session_factory


SessionFactoryDep = Annotated[sessionmaker, Depends(get_session_factory)]


class LiveMessages:
    """The newest message per run, keyed by its version, shared by every socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[int, str]] = {}

    def get(self, run_id: int, version: int) -> str | None:
        with self._lock:
            cached = self._latest.get(run_id)
        return cached[1] if cached is not None and cached[0] == version else None

    def put(self, run_id: int, version: int, text: str) -> None:
        with self._lock:
            self._latest[run_id] = (version, text)


def _messages(websocket: WebSocket) -> LiveMessages:
    state = websocket.app.state
    if not hasattr(state, "live_messages"):
        state.live_messages = LiveMessages()
    return state.live_messages


def _find_run(factory: sessionmaker, slug: str) -> int | None:
    with factory() as session:
        read_only(session)
        return session.scalar(select(Run.id).where(Run.slug == slug))


def _version(factory: sessionmaker, run_id: int) -> int:
    with factory() as session:
        read_only(session)
        return swarm_service.status_version(session, run_id=run_id)


def _message(factory: sessionmaker, run_id: int, half_life_s: float) -> tuple[int, str]:
    with factory() as session:
        read_only(session)
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError("the run was deleted")
        view = swarm_service.run_live_view(session, run=run, half_life_s=half_life_s)
        return view.version, view.model_dump_json()


@router.websocket("/{slug}/live")
async def live(websocket: WebSocket, slug: str, factory: SessionFactoryDep) -> None:
    run_id = await run_in_threadpool(_find_run, factory, slug)
    if run_id is None:
        await _refuse(websocket, f"No run named {slug!r}.")
        return
    await websocket.accept()
    async with anyio.create_task_group() as group:  # each task ends the other when it finishes
        group.start_soon(_until_disconnect, websocket, group.cancel_scope)
        await _push_updates(websocket, factory, run_id, group.cancel_scope)


async def _push_updates(
    websocket: WebSocket, factory: sessionmaker, run_id: int, scope: anyio.CancelScope
) -> None:
    settings = websocket.app.state.settings
    cache = _messages(websocket)
    sent = None
    try:
        while True:
            version = await run_in_threadpool(_version, factory, run_id)
            if version != sent:
                cached = cache.get(run_id, version)
                if cached is None:
                    version, built = await run_in_threadpool(
                        _message, factory, run_id, settings.leaderboard_half_life_s
                    )
                    cache.put(run_id, version, built)
                    cached = built
                await websocket.send_text(cached)
                sent = version
            await anyio.sleep(settings.live_poll_interval_s)
    except (WebSocketDisconnect, OSError):
        pass  # the client left
    except LookupError:
        await websocket.close(code=1000, reason="the run was deleted")
    scope.cancel()


async def _until_disconnect(websocket: WebSocket, scope: anyio.CancelScope) -> None:
    """Clients send nothing we need: reading only notices when they leave."""
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    scope.cancel()


async def _refuse(websocket: WebSocket, message: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"error": {"code": "not_found", "message": message, "fields": {}}}
        await websocket.send_denial_response(JSONResponse(body, status_code=404))
    else:
        await websocket.close(code=NOT_FOUND_CLOSE_CODE, reason=message[:120])
