"""`make demo` / `hivemind-site demo`: the whole system on one machine, as real processes.

1. a bootstrap DHT node (`hivemind-peer dht`);
2. the site on SQLite (`hivemind-site serve`) in a demo folder;
3. an organizer, three volunteers with API keys, and an open run (char-transformer on a corpus made
   of this project's own documentation, uploaded as the run's dataset);
4. three volunteer peers (`hivemind-peer join <run-url>` with their API keys, so the leaderboard
   credits alice, bob and carol).

The site's monitor polls every 3 s and saves the swarm's model every minute, so the run page shows
peers, a falling loss, the leaderboard and a model to download within a minute or two.

It prints the URL to open and stops everything cleanly on Ctrl-C. The site listens on 127.0.0.1:P
and the bootstrap node on 127.0.0.1:P+1337 (P is --port): if either port is taken, it says which and
exits with 1 before it starts anything; if the node or the site does not start, it shows the end of
that process's log and exits with 1.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_SLUG = "demo"
VOLUNTEERS = ("alice", "bob", "carol")
PASSWORD = "demo-password-1234"
BOOTSTRAP_PORT_OFFSET = 1337  # the bootstrap node listens on --port + this
_MAX_PORT = 65535 - BOOTSTRAP_PORT_OFFSET


class _DemoFailed(Exception):
    """A demo process could not start; the message says which and why."""


def demo_corpus() -> bytes:
    """A small text corpus that ships with the project: its own documentation."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    texts = sorted(docs.glob("*.md")) if docs.is_dir() else []
    corpus = b"\n\n".join(path.read_bytes() for path in texts)
    if len(corpus) < 10_000:  # an installed wheel has no docs/: fall back to the package's docstrings
        import peer

        modules = Path(peer.__file__).resolve().parent.rglob("*.py")
        corpus += b"\n".join(path.read_bytes() for path in sorted(modules))
    return corpus


def _port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (bound as the site and the node bind, with
    SO_REUSEADDR, so the closed connections of an earlier demo do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port_pair(start: int) -> int | None:
    for port in range(start, min(start + 200, _MAX_PORT + 1)):
        if not _port_in_use(port) and not _port_in_use(port + BOOTSTRAP_PORT_OFFSET):
            return port
    return None


def _ports_problem(port: int) -> str | None:
    """Why the demo cannot listen on `port` (the site) and `port` + 1337 (the bootstrap node), or None."""
    if not 1 <= port <= _MAX_PORT:
        return f"--port must be between 1 and {_MAX_PORT} (the bootstrap node listens on --port + 1337)."
    for what, busy in (("the site", port), ("the bootstrap DHT node", port + BOOTSTRAP_PORT_OFFSET)):
        if _port_in_use(busy):
            free = _free_port_pair(port + 1)
            hint = (
                f" (ports {free} and {free + BOOTSTRAP_PORT_OFFSET} are free: --port {free})" if free else ""
            )
            return (
                f"port {busy}, which {what} needs, is already in use on 127.0.0.1. Stop what listens "
                f"there, or pass --port P to move the site to port P and the bootstrap node to P+1337{hint}."
            )
    return None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail) if tail else "  (the log is empty)"


def _bootstrap_address(boot: subprocess.Popen, log_path: Path, timeout: float) -> str:
    """The multiaddr the bootstrap node prints first (`--initial-peers ADDR`). The caller stops the
    node if this fails."""
    assert boot.stdout is not None
    ready, _, _ = select.select([boot.stdout], [], [], timeout)
    line = boot.stdout.readline() if ready else ""
    words = line.split()
    if words and words[-1].startswith("/"):
        return words[-1]
    if ready and not line:  # its output ended: it is exiting
        with contextlib.suppress(subprocess.TimeoutExpired):
            boot.wait(timeout=10)
    if boot.poll() is not None:
        why = f"exited with code {boot.returncode}"
    elif line:
        why = f"printed {line.strip()!r} instead of its address"
    else:
        why = f"did not print its address within {timeout:.0f} s"
    raise _DemoFailed(f"the bootstrap DHT node {why}; the end of {log_path}:\n{_log_tail(log_path)}")


def _wait_for_site(url: str, site: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if site.poll() is not None:
            raise _DemoFailed(
                f"the site exited with code {site.returncode}; the end of {log_path}:\n{_log_tail(log_path)}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise _DemoFailed(
        f"{url} did not answer within {timeout:.0f} s; the end of {log_path}:\n{_log_tail(log_path)}"
    )


def _accounts(workdir: Path) -> tuple[str, dict[str, str]]:
    """Create the organizer and volunteers (idempotent); their API keys, plaintext."""
    from backend.db import make_engine, make_session_factory
    from backend.services.api_keys import create_api_key
    from backend.services.users import create_user, get_user_by_username
    from backend.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{workdir / 'hivemind-site.db'}",
        secret_key_file=workdir / "hivemind-site.secret",
    )
    engine = make_engine(settings.database_url)
    keys: dict[str, str] = {}
    with make_session_factory(engine)() as session:
        for username, role in (("organizer", "organizer"), *((name, "volunteer") for name in VOLUNTEERS)):
            user = get_user_by_username(session, username=username) or create_user(
                session, email=f"{username}@demo.invalid", username=username, password=PASSWORD, role=role
            )
            _, plaintext = create_api_key(session, user=user, name="demo")
            keys[username] = plaintext
        session.commit()
    engine.dispose()
    return keys.pop("organizer"), keys


def _create_run(site: str, organizer_key: str, bootstrap: str) -> None:
    headers = {"Authorization": f"Bearer {organizer_key}"}
    if httpx.get(f"{site}/api/v1/runs/{DEMO_SLUG}", timeout=10).status_code == 404:
        body = {
            "slug": DEMO_SLUG,
            "name": "Demo: a tiny GPT on our own docs",
            "description": "A **char-transformer** trained by three local volunteers. Watch the loss fall.",
            "recipe": {
                "name": "char-transformer",
                "config": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
            },
            "target_batch_size": 256,
            "optimizer": {"lr": 0.003},
            "averaging": {"min_matchmaking_time": 1.0, "averaging_timeout": 10},
            "auth_mode": "open",  # a token run needs a token for the bootstrap node too
            "initial_peers": [bootstrap],
        }
        response = httpx.post(f"{site}/api/v1/runs", json=body, headers=headers, timeout=30)
        response.raise_for_status()
    response = httpx.put(
        f"{site}/api/v1/runs/{DEMO_SLUG}/dataset",
        params={"filename": "docs.txt", "format": "text"},
        content=demo_corpus(),
        headers=headers,
        timeout=60,
    )
    response.raise_for_status()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (`kill`, `docker stop`) stop everything, even where SIGINT came ignored
    (a shell's background job): a caught signal is back to its default in each child after exec,
    so the children stop on the SIGINT the demo sends them too."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def run_demo(workdir: Path, port: int = 8000) -> int:
    problem = _ports_problem(port)
    if problem is not None:
        print(f"hivemind-site demo: {problem}", file=sys.stderr)
        return 1
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    site = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'hivemind-site.db'}",
        "HIVEMIND_SITE_PUBLIC_URL": site,
        "HIVEMIND_SITE_SECRET_KEY_FILE": str(workdir / "hivemind-site.secret"),
        "HIVEMIND_SITE_UPLOAD_DIR": str(workdir / "uploads"),
        "HIVEMIND_SITE_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "HIVEMIND_SITE_MONITOR_IDENTITY_DIR": str(workdir / "monitor"),
        "HIVEMIND_SITE_MONITOR_INTERVAL_S": os.environ.get("HIVEMIND_SITE_MONITOR_INTERVAL_S", "3"),
        "HIVEMIND_SITE_CHECKPOINT_PERIOD_S": os.environ.get("HIVEMIND_SITE_CHECKPOINT_PERIOD_S", "60"),
        "PYTHONUNBUFFERED": "1",
    }
    processes: list[subprocess.Popen] = []
    _stop_on_signals()
    try:
        print("starting the bootstrap DHT node ...", flush=True)
        # a fixed port and key file give the bootstrap the same address on every rerun of the demo
        boot = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peer.cli",
                "dht",
                "--host",
                "127.0.0.1",
                "--port",
                str(port + BOOTSTRAP_PORT_OFFSET),
                "--identity",
                str(workdir / "bootstrap.key"),
            ],
            stdout=subprocess.PIPE,
            stderr=open(workdir / "bootstrap.log", "w"),
            text=True,
            env=env,
        )
        processes.append(boot)
        bootstrap = _bootstrap_address(boot, workdir / "bootstrap.log", timeout=60)
        print(f"starting the site at {site} (log: {workdir / 'site.log'}) ...", flush=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
            stdout=open(workdir / "site.log", "w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        processes.append(server)
        _wait_for_site(f"{site}/api/v1/health", server, workdir / "site.log", 60)
        organizer_key, volunteer_keys = _accounts(workdir)
        _create_run(site, organizer_key, bootstrap)
        run_url = f"{site}/runs/{DEMO_SLUG}"
        for name, key in volunteer_keys.items():
            log = open(workdir / f"peer-{name}.log", "w")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "peer.cli",
                        "join",
                        run_url,
                        "--data-dir",
                        str(workdir / f"peer-{name}"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**env, "HIVEMIND_TOKEN": key},
                )
            )
        print(
            f"\n  open {run_url}\n  (accounts: organizer, alice, bob, carol; password {PASSWORD})\n"
            f"  peer logs: {workdir}/peer-*.log   Ctrl-C stops everything\n",
            flush=True,
        )
        while all(process.poll() is None for process in processes):
            time.sleep(1)
        failed = [process.args for process in processes if process.poll() is not None]
        print(f"a demo process exited unexpectedly: {failed}; see the logs in {workdir}", file=sys.stderr)
        return 1
    except _DemoFailed as e:
        print(f"hivemind-site demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo ...", flush=True)
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
