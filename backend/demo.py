"""`make demo` / `hivemind-site demo`: the whole system on one machine, as real processes.

1. a bootstrap DHT node (`hivemind-peer dht`);
2. the site on SQLite (`hivemind-site serve`) in a demo folder;
3. an organizer, three volunteers with API keys, and an open run (char-transformer on a corpus made
   of this project's own documentation, uploaded as the run's dataset);
4. three volunteer peers (`hivemind-peer join <run-url>` with their API keys, so the leaderboard
   credits alice, bob and carol).

The site's monitor polls every 3 s and saves the swarm's model every minute, so the run page shows
peers, a falling loss, the leaderboard and a model to download within a minute or two.

It prints the URL to open and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_SLUG = "demo"
VOLUNTEERS = ("alice", "bob", "carol")
PASSWORD = "demo-password-1234"


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


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


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
                str(port + 1337),
                "--identity",
                str(workdir / "bootstrap.key"),
            ],
            stdout=subprocess.PIPE,
            stderr=open(workdir / "bootstrap.log", "w"),
            text=True,
            env=env,
        )
        processes.append(boot)
        assert boot.stdout is not None
        bootstrap = boot.stdout.readline().split()[-1]
        print(f"starting the site at {site} (log: {workdir / 'site.log'}) ...", flush=True)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
                stdout=open(workdir / "site.log", "w"),
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        )
        _wait_for(f"{site}/api/v1/health", 60)
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
