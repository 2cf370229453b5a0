"""The load generator of `benchmarks/site_load.py`, run in a process of its own.

`load_process(plan, connection)` runs `plan.clients` HTTP clients (httpx, keep-alive; with
`plan.think_s`, each pauses a random time of that mean between its requests, so requests arrive like
independent users'; none by default) over the run page's endpoints, `plan.ws_clients`
WebSocket clients on the run's live socket and one probe that polls /metrics for the newest point,
then sends a `LoadResult` (as a dict) back through `connection`. It imports nothing of the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx

HISTORY_S = 6 * 3600  # the run page's JS asks for this much history
ENDPOINTS = ("run", "peers", "leaderboard", "metrics", "experts", "page")
_VERSION = re.compile(rb'"version":(\d+)')


@dataclass(frozen=True)
class LoadPlan:
    base_url: str
    slug: str
    clients: int
    ws_clients: int
    duration_s: float
    endpoints: tuple[str, ...] = ENDPOINTS
    think_s: float = 0.0


@dataclass
class LoadResult:
    started: float = 0.0  # unix time when the HTTP load began
    ended: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_examples: list[str] = field(default_factory=list)
    ws_connected: int = 0
    ws_open_at_end: int = 0
    ws_connect_s: float = 0.0
    ws_received: list[tuple[int, float]] = field(default_factory=list)  # (version, unix time received)
    rest_seen: list[tuple[float, float]] = field(default_factory=list)  # (point t, unix time first seen)
    cpu_s: float = 0.0

    def error(self, name: str, text: str) -> None:
        self.errors[name] += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(f"{name}: {text}")


def paths(slug: str) -> dict[str, str]:
    api = f"/api/v1/runs/{slug}"
    return {
        "run": api,
        "peers": f"{api}/peers",
        "leaderboard": f"{api}/leaderboard",
        "metrics": f"{api}/metrics",
        "experts": f"{api}/experts",
        "page": f"/runs/{slug}",
    }


async def _http_client(
    client: httpx.AsyncClient, plan: LoadPlan, result: LoadResult, number: int, stop: float
):
    urls = paths(plan.slug)
    shift = number % len(plan.endpoints)  # the clients do not all ask for the same thing at once
    order = plan.endpoints[shift:] + plan.endpoints[:shift]
    rng = random.Random(number)
    if plan.think_s:  # clients that pause arrive at random times, not in step with each other
        await asyncio.sleep(rng.uniform(0, plan.think_s))
    while time.monotonic() < stop:
        for name in order:
            params = {"since": time.time() - HISTORY_S} if name == "metrics" else None
            started = time.perf_counter()
            try:
                response = await client.get(urls[name], params=params)
            except httpx.HTTPError as e:
                result.error(name, f"{type(e).__name__}: {e}")
                continue
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                result.error(name, f"HTTP {response.status_code}: {response.text[:200]}")
            else:
                result.latencies[name].append(elapsed)
            if plan.think_s:
                await asyncio.sleep(rng.expovariate(1 / plan.think_s))


class _Sockets:
    """The WebSocket clients' shared state: how many are up, and when they stop."""

    def __init__(self, expected: int):
        self.expected, self.opened, self.settled = expected, 0, 0
        self.all_settled = asyncio.Event()
        self.stop = math.inf  # a time.monotonic() deadline, set when the HTTP load starts

    def settle(self, opened: bool) -> None:
        self.opened += int(opened)
        self.settled += 1
        if self.settled == self.expected:
            self.all_settled.set()


async def _ws_client(plan: LoadPlan, result: LoadResult, sockets: _Sockets) -> None:
    from websockets.asyncio.client import connect

    url = plan.base_url.replace("http://", "ws://") + f"/api/v1/runs/{plan.slug}/live"
    settled = False
    try:
        async with connect(url, max_size=2**24, open_timeout=60, ping_interval=None) as socket:
            sockets.settle(True)
            settled = True
            while (remaining := sockets.stop - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(socket.recv(decode=False), min(remaining, 3600))
                except TimeoutError:
                    continue
                match = _VERSION.search(message[:200])
                if match:
                    result.ws_received.append((int(match.group(1)), time.time()))
            result.ws_open_at_end += 1
    except Exception as e:  # a refused or dropped socket is the site's error, not the benchmark's
        result.error("websocket", f"{type(e).__name__}: {e}")
        if not settled:
            sockets.settle(False)


async def _lag_probe(plan: LoadPlan, result: LoadResult, stop: float) -> None:
    """Polls /metrics for points newer than the newest it saw: when each becomes visible over REST."""
    newest = time.time() - 60
    async with httpx.AsyncClient(base_url=plan.base_url, timeout=30) as client:
        while time.monotonic() < stop:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"/api/v1/runs/{plan.slug}/metrics", params={"since": newest})
                if response.status_code == 200:
                    for point in response.json()["points"]:
                        if point["resolution_s"] == 0 and point["t"] > newest:
                            result.rest_seen.append((point["t"], time.time()))
                            newest = point["t"]
            await asyncio.sleep(0.1)


async def _load(plan: LoadPlan) -> LoadResult:
    result, sockets = LoadResult(), _Sockets(plan.ws_clients)
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close them under a
    # request in flight (a ReadError that is the client's race, not the site's error).
    limits = httpx.Limits(
        max_connections=plan.clients, max_keepalive_connections=plan.clients, keepalive_expiry=3.0
    )
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(plan.ws_clients):
            group.create_task(_ws_client(plan, result, sockets))
        if plan.ws_clients:
            await asyncio.wait_for(sockets.all_settled.wait(), 180)
        result.ws_connect_s, result.ws_connected = time.monotonic() - started, sockets.opened
        stop = sockets.stop = time.monotonic() + plan.duration_s
        result.started = time.time()
        async with httpx.AsyncClient(base_url=plan.base_url, limits=limits, timeout=30) as client:
            async with asyncio.TaskGroup() as clients:
                clients.create_task(_lag_probe(plan, result, stop))
                for number in range(plan.clients):
                    clients.create_task(_http_client(client, plan, result, number, stop))
        result.ended = time.time()
    return result


def load_process(plan: LoadPlan, connection) -> None:
    """The load generator's process: runs `plan`, sends its `LoadResult` back as a dict."""
    result = asyncio.run(_load(plan))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = usage.ru_utime + usage.ru_stime
    values = dict(result.__dict__)
    values["latencies"], values["errors"] = dict(result.latencies), dict(result.errors)
    connection.send(values)
    connection.close()
