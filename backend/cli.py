"""The `hivemind-site` command line: `serve` (migrates, then serves), `monitor` (the swarm monitor as
its own process), `create-user` and `demo`."""

from __future__ import annotations

import contextlib
import gc
import getpass
import logging
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from backend.settings import Settings

app = typer.Typer(
    help="hivemind-site: publish collaborative runs and issue access tokens.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


# Database connections each `serve` process keeps open. The pool never makes a request wait for
# one (no overflow limit): a request keeps its session's connection while it waits for a worker
# thread for its next step, so a pool that could run dry would let every worker thread wait for a
# connection held by a request that waits for a thread, a deadlock (50 concurrent readers were
# enough with SQLAlchemy's default 5 + 10). Concurrent connections are bounded by requests instead.
SERVE_POOL_SIZE = 20


def _settings(database_url: str | None, **overrides: object) -> Settings:
    values: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    if database_url:
        values["database_url"] = database_url
    try:
        return Settings(**values)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    database_url: Annotated[str | None, typer.Option(help="Overrides DATABASE_URL.")] = None,
    proxy_headers: Annotated[bool, typer.Option(help="Trust X-Forwarded-* from a local proxy.")] = True,
    monitor: Annotated[
        bool | None,
        typer.Option(
            "--monitor/--no-monitor",
            help="Run the swarm monitor inside the site (default: HIVEMIND_SITE_MONITOR_ENABLED, true). "
            "Use --no-monitor when `hivemind-site monitor` runs as its own process.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes. Each has its own event loop, thread pool and caches, so a site on N "
            "cores can use about N of them (one Python process uses about one). With more than one, the "
            "swarm monitor runs in this process and the workers only serve.",
        ),
    ] = 1,
) -> None:
    """Upgrade the database schema to the newest migration, then serve the site."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(database_url, monitor_enabled=monitor)
    from backend.migrate import upgrade

    upgrade(settings.database_url)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": proxy_headers,
        "log_level": "info",
    }
    if workers == 1:
        from backend.app import create_app

        engine = _serve_engine(settings)
        try:
            site = create_app(settings, engine=engine)
            _freeze_startup_heap()
            uvicorn.run(site, **options)
        finally:
            engine.dispose()
        return
    settings.resolved_secret_key()  # generated (and saved to its file) once, before the workers read it
    os.environ["DATABASE_URL"] = settings.database_url  # what the workers' Settings() read
    os.environ["HIVEMIND_SITE_MONITOR_ENABLED"] = "false"
    with _monitor_running(settings) if settings.monitor_enabled else contextlib.nullcontext():
        uvicorn.run("backend.cli:worker_app", factory=True, workers=workers, **options)


def worker_app():
    """One `serve --workers N` process's app (uvicorn imports and calls this); `serve` sets the
    environment its settings come from."""
    from backend.app import create_app

    settings = Settings()
    site = create_app(settings, engine=_serve_engine(settings))
    _freeze_startup_heap()
    return site


def _freeze_startup_heap() -> None:
    """Keep what start-up made (the app, torch and the rest of `peer`: some 280,000 objects) out of the
    garbage collector's full collections, which would otherwise walk all of it every few seconds
    under load and stall every request for 100-200 ms (p99 35 ms with this, 135 ms without, in
    benchmarks/site_load.py with paced clients)."""
    gc.collect()
    gc.freeze()


def _serve_engine(settings: Settings):
    from backend.db import make_engine

    return make_engine(settings.database_url, pool_size=SERVE_POOL_SIZE, max_overflow=-1)


@contextlib.contextmanager
def _monitor_running(settings: Settings) -> Iterator[None]:
    """The swarm monitor (with the checkpoint saver) running on its own engine, in this process."""
    from backend.checkpoints import CheckpointSaver, monitor_hook
    from backend.db import make_engine, make_session_factory
    from backend.monitor import MonitorConfig, MonitorService, SwarmMonitor

    engine = make_engine(settings.database_url)
    try:
        service = MonitorService(
            SwarmMonitor(
                MonitorConfig.from_settings(settings),
                make_session_factory(engine),
                secret_key=settings.resolved_secret_key(),
                hooks=[monitor_hook(CheckpointSaver.from_settings(settings))],
            )
        )
        service.start()
        try:
            yield
        finally:
            service.stop()
    finally:
        engine.dispose()


@app.command("monitor")
def monitor_command(
    database_url: Annotated[str | None, typer.Option(help="Overrides DATABASE_URL.")] = None,
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds between polls (default: HIVEMIND_SITE_MONITOR_INTERVAL_S, 10)."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Poll every run once, print the outcome, exit.")
    ] = False,
) -> None:
    """Run the swarm monitor as its own process, instead of inside `serve`.

    Every --interval seconds the monitor joins each active run's swarm as a client-mode DHT peer
    (through the run's initial peers; on token runs with a token it mints for itself with the
    run's authority key), reads the signed progress and peer records (and the expert declarations
    of Mixture-of-Experts runs), drops and counts invalid ones, and stores the live view, the
    history and the leaderboard in the site's database. It only reads: it is never on the
    training path.

    A lease in the database lets only one monitor poll at a time (others stand by and take over
    when it stops). Start the site with `serve --no-monitor` (or
    `HIVEMIND_SITE_MONITOR_ENABLED=false`) and give this process the site's database and secret
    key (`HIVEMIND_SITE_SECRET_KEY` or the same secret key file). The other monitor settings
    (`HIVEMIND_SITE_MONITOR_*`, `HIVEMIND_SITE_SANITY_*`, `HIVEMIND_SITE_LEADERBOARD_HALF_LIFE_S`)
    are described in docs/site.md. Ctrl-C or SIGTERM stops it cleanly.
    """
    from backend.checkpoints import CheckpointSaver, monitor_hook
    from backend.db import make_engine, make_session_factory
    from backend.migrate import upgrade
    from backend.monitor import MonitorConfig, MonitorService, SwarmMonitor
    from backend.monitor.service import wait_for_signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(database_url, monitor_interval_s=interval)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    swarm_monitor = SwarmMonitor(
        MonitorConfig.from_settings(settings),
        make_session_factory(engine),
        secret_key=settings.resolved_secret_key(),
        hooks=[monitor_hook(CheckpointSaver.from_settings(settings))],
    )
    try:
        if once:
            try:
                results = swarm_monitor.poll_once()
            finally:
                swarm_monitor.shutdown()
            for slug, error in sorted(results.items()):
                typer.echo(f"{slug}: {error or 'stored'}")
            raise typer.Exit(1 if any(results.values()) else 0)
        service = MonitorService(swarm_monitor)
        service.start()
        received = wait_for_signal(service)
        if received is None:
            typer.echo("error: the swarm monitor stopped on an error (see the log above)", err=True)
            raise typer.Exit(1)
        logging.getLogger(__name__).info("%s received: the monitor is shutting down", received)
        service.stop()
    finally:
        engine.dispose()


@app.command()
def demo(
    workdir: Annotated[
        str, typer.Option(help="Folder for the demo's database, uploads, keys and logs.")
    ] = ".demo",
    port: Annotated[int, typer.Option(help="Port of the site.")] = 8000,
) -> None:
    """Run the whole system locally: a bootstrap node, the site, a demo run and three volunteers."""
    from pathlib import Path

    from backend.demo import run_demo

    raise typer.Exit(run_demo(Path(workdir), port))


@app.command("create-user")
def create_user(
    email: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    role: Annotated[str, typer.Option(help="volunteer, organizer or admin.")] = "volunteer",
    username: Annotated[str | None, typer.Option(help="Defaults to the part of the email before @.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    database_url: Annotated[str | None, typer.Option(help="Overrides DATABASE_URL.")] = None,
) -> None:
    """Create an account (the database is migrated first)."""
    from backend.db import make_engine, make_session_factory
    from backend.errors import SiteError
    from backend.migrate import upgrade
    from backend.services.users import create_user as create_user_row

    settings = _settings(database_url)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            typer.echo("error: the passwords differ", err=True)
            raise typer.Exit(1)
    role = "admin" if admin else role
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            user = create_user_row(
                session, email=email, username=username or email.split("@")[0], password=password, role=role
            )
            session.commit()
            typer.echo(f"created {user.role} {user.username} <{user.email}>")
    except SiteError as e:
        details = "; ".join(f"{k}: {v}" for k, v in getattr(e, "fields", {}).items())
        typer.echo(f"error: {e.message} {details}".rstrip(), err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _register_demo_setup() -> None:  # `hivemind-site demo-setup` lives with its logic in backend.demo_setup
    from backend.demo_setup import demo_setup_command

    app.command("demo-setup")(demo_setup_command)


_register_demo_setup()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
