"""Load on a run page's data: many readers and live sockets while the monitor keeps writing.

    .venv/bin/python benchmarks/site_load.py [--peers 200] [--clients 50] [--ws-clients 100]
        [--duration 30] [--think 0.5] [--interval 5] [--history-hours 6] [--endpoints run,peers,...]
        [--database-url postgresql+psycopg://...] [--serve-arg=--workers --serve-arg=2] [--py-spy FILE]

It fills one Mixture-of-Experts run through the monitor's own write path (`site_load_swarm.py`:
`--peers` synthetic peers, some credited to users through issued tokens, the rest by PeerID, a tenth
offline at any time; `--history-hours` of polls, one a minute and then one every `--interval` for the
last hour, which the real retention downsamples) on a fresh SQLite database (or a fresh database
created on the PostgreSQL server of `--database-url`, dropped afterwards), then starts a real
`hivemind-site serve` (uvicorn, as deployed; its own monitor off) on it.

During the load this process keeps storing a poll every `--interval` seconds through the same path
(timing each), while a separate process (`site_load_clients.py`, so that the load generator's GIL
does not throttle the server more than it must) runs `--clients` HTTP clients (httpx, keep-alive)
over the run page's endpoints: GET /api/v1/runs/{slug}, /peers, /leaderboard, /metrics?since=(6 h
ago, as the page asks), /experts and the run page's HTML itself. By default each client waits a random
time of mean `--think` (0.5 s) between its requests, like independent users or dashboards (50 clients
then offer about 90 requests/s); with `--think 0` each sends its next request as soon as it has the
answer, so the clients saturate the server and the latency is about clients / throughput: that run
measures the throughput ceiling, not the latency a user sees. `--ws-clients` WebSocket clients stay
connected to /api/v1/runs/{slug}/live and count their updates, and one probe polls /metrics for the
newest point.

It prints requests/s and p50/p90/p99/max latency per endpoint and overall, errors, the WebSocket
updates received and their latency (from the poll's commit), the monitor lag (from the poll's data to
it being visible over REST and over the WebSocket), the store time per poll, the server's CPU use and
peak RSS, and the load average before and after: the load generator, this process and whatever else
runs on the machine share its cores with the server. Target on a 2-core machine: p99 <= 100 ms on
SQLite. It asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from site_load_clients import ENDPOINTS, LoadPlan, load_process

TARGET_P99_MS = 100.0


@contextlib.contextmanager
def database(url: str | None, workdir: Path) -> Iterator[str]:
    """SQLite in `workdir`, or a fresh database on the PostgreSQL server of `url` (dropped at the end)."""
    if not url or url.startswith("sqlite"):
        yield url or f"sqlite:///{workdir / 'site.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(url)
    name = f"hivemind_site_load_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---- the server --------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(workdir: Path, database_url: str, env: dict[str, str], serve_args: list[str]):
    """`hivemind-site serve` as deployed (its monitor off); yields (process, base URL)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **env,
        "HIVEMIND_SITE_PUBLIC_URL": base_url,
        "HIVEMIND_SITE_MONITOR_ENABLED": "false",
    }
    command = [
        sys.executable,
        "-m",
        "backend.cli",
        "serve",
        "--port",
        str(port),
        "--database-url",
        database_url,
    ]
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command + serve_args, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base_url}/api/v1/health", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the site did not start:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
            yield process, base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _family(pid: int) -> list[int]:
    """`pid` and its children (`serve --workers N` runs its workers as child processes)."""
    with contextlib.suppress(OSError):
        return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    return [pid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server's processes."""
    total = 0.0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mib(pid: int) -> float:
    """The sum of the server's processes' peak resident memory."""
    total = 0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{member}/status").read_text()
            total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return total / 1024


# ---- the report --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _row(label: str, values: list[float], seconds: float, errors: int) -> str:
    ms = [value * 1000 for value in values]
    cells = "".join(f"{percentile(ms, q):>9.1f}" for q in (50, 90, 99)) + f"{max(ms, default=math.nan):>9.1f}"
    return f"{label:<13}{len(values):>9}{len(values) / seconds:>9.1f}{cells}{errors:>8}"


def _summary(label: str, seconds: list[float]) -> str:
    ms = [value * 1000 for value in seconds]
    if not ms:
        return f"  {label}: no samples"
    figures = f"p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms"
    return f"  {label}: {figures} (n={len(ms)})"


def report_http(result: dict, args: argparse.Namespace) -> None:
    seconds = max(result["ended"] - result["started"], 1e-9)
    latencies, errors = result["latencies"], result["errors"]
    pacing = (
        f", {args.think:g} s between a client's requests" if args.think else ", no pause between requests"
    )
    print(f"\n{args.clients} HTTP clients for {seconds:.1f} s{pacing}")
    print(
        f"{'endpoint':<13}{'requests':>9}{'req/s':>9}"
        + "".join(f"{h:>9}" for h in ("p50 ms", "p90 ms", "p99 ms", "max ms"))
        + f"{'errors':>8}"
    )
    for name in args.endpoints:
        print(_row(name, latencies.get(name, []), seconds, errors.get(name, 0)))
    everything = [value for name in args.endpoints for value in latencies.get(name, [])]
    print(
        _row("all", everything, seconds, sum(count for name, count in errors.items() if name != "websocket"))
    )
    p99 = percentile([value * 1000 for value in everything], 99)
    verdict = "meets" if p99 <= TARGET_P99_MS else "misses"
    print(f"overall p99 {p99:.1f} ms: {verdict} the target of {TARGET_P99_MS:.0f} ms")
    for example in result["error_examples"]:
        print(f"  error: {example}")


def report_live(result: dict, polls: list, args: argparse.Namespace) -> None:
    """WebSocket updates and the monitor lag, from this process's poll log and the clients' receipts."""
    by_version = {poll.version: poll for poll in polls}
    received = [(by_version[v], when) for v, when in result["ws_received"] if v in by_version]
    settle_s = 2 * max(1.0, args.interval)  # polls stored this close to the end may not have arrived yet
    window = {p.version for p in polls if result["started"] <= p.committed <= result["ended"] - settle_s}
    counted = [when - poll.committed for poll, when in received if poll.version in window]
    first: dict[int, float] = {}
    for poll, when in received:
        first[poll.version] = min(first.get(poll.version, math.inf), when)
    print(
        f"\nWebSocket: {result['ws_connected']}/{args.ws_clients} connected in "
        f"{result['ws_connect_s']:.1f} s, {result['ws_open_at_end']} open at the end, "
        f"{result['errors'].get('websocket', 0)} errors; "
        f"{len(counted)} of {len(window) * args.ws_clients} updates received ({len(window)} polls x "
        f"{args.ws_clients} sockets, the last {settle_s:g} s left out)"
    )
    print(_summary("update latency, poll committed -> message received", counted))
    print(f"monitor: {len(polls)} polls stored during the load, one every {args.interval:g} s")
    print(_summary("store time per poll", [poll.store_s for poll in polls]))
    rest = dict(result["rest_seen"])
    print(
        _summary(
            "lag, poll data -> visible over REST",
            [rest[p.data_t] - p.data_t for p in polls if p.data_t in rest],
        )
    )
    print(
        _summary(
            "lag, poll data -> first WebSocket message",
            [first[p.version] - p.data_t for p in polls if p.version in first],
        )
    )


# ---- main --------------------------------------------------------------------------------------


def _py_spy(pid: int, out: str, seconds: float) -> subprocess.Popen | None:
    binary = shutil.which("py-spy")
    if binary is None:
        print("py-spy is not on PATH: no profile (pip install py-spy)")
        return None
    fmt = "speedscope" if out.endswith(".json") else "flamegraph"
    command = [binary, "record", "-p", str(pid), "-o", out, "-d", str(int(seconds)), "-f", fmt, "-s"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    from site_load_swarm import fill_history, prepare  # the site's code: not in the load process

    from backend.db import make_engine, make_session_factory
    from backend.migrate import upgrade
    from backend.settings import Settings

    secret = "site-load-" + os.urandom(24).hex()
    with database(args.database_url, workdir) as url:
        settings = Settings(database_url=url, secret_key=secret, monitor_interval_s=args.interval)
        upgrade(url)
        engine = make_engine(url)
        try:
            factory = make_session_factory(engine)
            prepared = prepare(factory, settings, args, random.Random(args.seed))
            fill_history(factory, prepared, args.interval)
            print(
                f"history: {prepared.readings} polls of {args.peers} peers over {args.history_hours:g} h in "
                f"{prepared.fill_s:.1f} s ({prepared.fill_s / prepared.readings * 1000:.0f} ms per poll), "
                f"{prepared.points} points kept after downsampling, on {engine.dialect.name}"
            )
            env = {"HIVEMIND_SITE_SECRET_KEY": secret, "HIVEMIND_SITE_MONITOR_INTERVAL_S": str(args.interval)}
            with running_server(workdir, url, env, args.serve_arg or []) as (process, base_url):
                plan = LoadPlan(
                    base_url,
                    prepared.slug,
                    args.clients,
                    args.ws_clients,
                    args.duration,
                    args.endpoints,
                    args.think,
                )
                _run_load(plan, process, factory, prepared, args)
        finally:
            engine.dispose()


def _run_load(plan: LoadPlan, process: subprocess.Popen, factory, prepared, args: argparse.Namespace) -> None:
    from site_load_swarm import MonitorWriter

    load_before = os.getloadavg()[0]
    httpx.get(f"{plan.base_url}/runs/{plan.slug}", timeout=30)  # the server's lazy imports and caches
    writer = MonitorWriter(factory, prepared, args.interval)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its own GIL, none of ours
    receiver, sender = context.Pipe(duplex=False)
    loader = context.Process(target=load_process, args=(plan, sender), name="site-load")
    loader.start()
    writer.start()
    cpu_before = cpu_seconds(process.pid)
    profiler = _py_spy(process.pid, args.py_spy, args.duration + 5) if args.py_spy else None
    try:
        if not receiver.poll(args.duration + 300):
            raise RuntimeError("the load process sent no result")
        result = receiver.recv()
        cpu_s = cpu_seconds(process.pid) - cpu_before
    finally:
        writer.stop.set()
        writer.join(timeout=60)
        loader.join(timeout=30)
    if profiler is not None:
        profiler.wait(timeout=120)
        print(f"py-spy profile of the server: {args.py_spy}")
    if writer.errors:
        print(f"monitor writer errors: {len(writer.errors)}, e.g. {writer.errors[0]}")
    report_http(result, args)
    report_live(result, writer.log, args)
    seconds = max(result["ended"] - result["started"], 1e-9)
    print(
        f"server: {cpu_s:.1f} CPU s ({cpu_s / seconds:.2f} cores), "
        f"peak RSS {peak_rss_mib(process.pid):.0f} MiB; "
        f"load process: {result['cpu_s']:.1f} CPU s; both share {os.cpu_count()} cores with this process "
        f"(load average {load_before:.2f} before the load, {os.getloadavg()[0]:.2f} after)"
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--peers", type=int, default=200, help="peers in the run's history")
    add("--users", type=int, default=50, help="volunteers holding tokens (3 peers each)")
    add("--clients", type=int, default=50, help="concurrent HTTP clients")
    add("--ws-clients", type=int, default=100, help="WebSocket clients on /live")
    add("--duration", type=float, default=30.0, help="seconds of load")
    add("--think", type=float, default=0.5, help="mean seconds a client waits between requests; 0 saturates")
    add("--endpoints", default=",".join(ENDPOINTS), help="which of them the clients read (comma-separated)")
    add("--interval", type=float, default=5.0, help="seconds between two monitor polls")
    add("--history-hours", type=float, default=6.0, help="history stored before the load")
    add("--database-url", help="a PostgreSQL server URL (a fresh database is made on it, dropped after)")
    add("--py-spy", metavar="FILE", help="profile the server with py-spy (FILE.svg or FILE.json)")
    add("--serve-arg", action="append", metavar="ARG", help="an extra `hivemind-site serve` argument")
    add("--seed", type=int, default=0)
    add("--keep", action="store_true", help="keep the work folder (database, server log)")
    args = parser.parse_args()
    args.endpoints = tuple(name.strip() for name in args.endpoints.split(",") if name.strip())
    if not args.endpoints or set(args.endpoints) - set(ENDPOINTS):
        parser.error(f"--endpoints must name some of {', '.join(ENDPOINTS)}")
    if args.peers < 3 or args.clients < 1 or args.ws_clients < 0:
        parser.error("--peers must be at least 3, --clients at least 1, --ws-clients at least 0")
    if args.duration <= 0 or args.interval <= 0 or args.think < 0 or args.history_hours < 0:
        parser.error("--duration and --interval must be positive, --think and --history-hours not negative")
    return args


def main() -> None:
    args = _parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="site-load-"))
    print(
        f"site load: {args.peers} peers, {args.clients} HTTP clients, {args.ws_clients} WebSocket clients, "
        f"{args.duration:g} s; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"work folder {workdir}"
    )
    try:
        run_benchmark(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
