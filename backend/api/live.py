"""WS /api/v1/runs/{slug}/live: a `LiveUpdate` JSON message whenever the run's stored state changes.

Every socket of a run shares one `LiveFeed` (per process and event loop): every
`live_poll_interval_s` one of them checks the version of the run's monitor status (one small query
for all of them, so it works the same with the monitor inside the site or in its own process) and,
when it changed, builds the message once; each change wakes every socket, which sends it. A socket
sends the current view right after connecting, then one message per stored poll. Clients send
nothing; an unknown run is refused with a 404 JSON error (or close code 4404 where the server cannot
send one).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
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


class LiveFeed:
    """One run's newest message, shared by the sockets that watch it (all on one event loop)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.version: int | None = None
        self.text = ""
        self.checked_at = -math.inf  # time.monotonic() of the last version check
        self.changed = anyio.Event()  # set (and replaced) when the message changes
        self.subscribers = 0
        self._lock = anyio.Lock()

    async def refresh(self, factory: sessionmaker, half_life_s: float, max_age_s: float) -> None:
        """Check the run's version unless that was done less than `max_age_s` ago, and rebuild the
        message if it changed. Concurrent callers wait for the one that checks."""
        async with self._lock:
            if time.monotonic() - self.checked_at < max_age_s:
                return
            version = await run_in_threadpool(_version, factory, self.run_id)
            if version != self.version:
                self.version, self.text = await run_in_threadpool(_message, factory, self.run_id, half_life_s)
                self.changed.set()
                self.changed = anyio.Event()
            self.checked_at = time.monotonic()


class LiveFeeds:
    """The app's feeds, per event loop (a test client may run the app on several) and run."""

    def __init__(self) -> None:
        self._feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LiveFeed]] = (
            weakref.WeakKeyDictionary()
        )

    @contextmanager
    def subscribe(self, run_id: int) -> Iterator[LiveFeed]:
        """The run's feed for as long as the caller watches it (it goes when its last socket does)."""
        feeds = self._feeds.setdefault(asyncio.get_running_loop(), {})
        feed = feeds.setdefault(run_id, LiveFeed(run_id))
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and feeds.get(run_id) is feed:
                del feeds[run_id]


def _feeds(websocket: WebSocket) -> LiveFeeds:
    state = websocket.app.state
    if not hasattr(state, "live_feeds"):
        state.live_feeds = LiveFeeds()
    return state.live_feeds


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
    with _feeds(websocket).subscribe(run_id) as feed:
        async with anyio.create_task_group() as group:  # each task ends the other when it finishes
            group.start_soon(_until_disconnect, websocket, group.cancel_scope)
            await _push_updates(websocket, factory, feed, group.cancel_scope)


async def _push_updates(
    websocket: WebSocket, factory: sessionmaker, feed: LiveFeed, scope: anyio.CancelScope
) -> None:
    settings = websocket.app.state.settings
    interval = settings.live_poll_interval_s
    sent = None
    try:
        while True:
            changed = feed.changed  # taken first: a change made from here on ends the wait below
            await feed.refresh(factory, settings.leaderboard_half_life_s, interval)
            if feed.version != sent:
                sent = feed.version
                await websocket.send_text(feed.text)
            with anyio.move_on_after(max(0.0, feed.checked_at + interval - time.monotonic())):
                await changed.wait()
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
