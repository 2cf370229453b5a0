"""`hivemind-site demo-setup`: the demo's organizer and run, made without a browser (idempotent).

Docker Compose runs it once, after the site is healthy and the bootstrap node has started
(docker-compose.yml, docs/deployment.md). Each step is skipped when its result already exists:

1. migrate the database (a no-op when `hivemind-site serve` already did);
2. create the organizer account (its password comes from the environment, never a default);
3. create the demo run: open to every peer, the char-transformer recipe, and the bootstrap node as its
   initial peer. With the node's key file the address ends in `/p2p/<PeerID>`, so joining peers
   authenticate the node they dial;
4. store the corpus that ships with the project as the run's dataset, when the run has none.

On a rerun the one thing that changes is a bootstrap node whose key changed (its volume was
recreated): its new address replaces the old one among the run's initial peers; other peers stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.demo import DEMO_SLUG, demo_corpus
from backend.errors import SiteError
from backend.models import AuthMode, Run, User
from backend.schemas import Recipe, RunCreate, RunSettings
from backend.services.datasets import store_upload
from backend.services.runs import check_can_manage, create_run, update_run
from backend.services.users import create_user, get_user_by_username
from backend.settings import Settings
from peer.errors import IdentityError, MultiaddrError
from peer.net.identity import Identity
from peer.net.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
# a model that trains visibly on a laptop's CPU in a few minutes (the same one as `make demo`)
DEMO_RECIPE = Recipe(
    name="char-transformer", config={"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64}
)


class DemoSetupError(Exception):
    """The demo cannot be set up with what was given; the message says what to change."""


@dataclass(frozen=True)
class DemoSetupConfig:
    slug: str = DEMO_SLUG
    organizer_email: str = "organizer@example.org"
    organizer_username: str = "organizer"
    organizer_password: str | None = None  # needed only when the account does not exist yet
    bootstrap_address: str | None = None  # e.g. /dns4/bootstrap/tcp/31337
    bootstrap_identity: Path | None = None  # the bootstrap node's key file, for its PeerID


@dataclass
class DemoSetupResult:
    run_url: str
    initial_peers: list[str]
    created: list[str] = field(default_factory=list)  # what this call created or changed


def bootstrap_maddr(address: str, identity_path: Path | None) -> str:
    """The bootstrap node's multiaddr, ending in /p2p/<PeerID> when its key file is given."""
    try:
        maddr = Multiaddr.parse(address)
    except MultiaddrError as e:
        raise DemoSetupError(f"--bootstrap-address: {e}") from None
    if identity_path is None:
        return str(maddr)
    try:
        peer_id = Identity.load(identity_path).peer_id
    except IdentityError as e:
        raise DemoSetupError(f"--bootstrap-identity: {e} (has the bootstrap node started?)") from None
    if maddr.peer_id is not None and maddr.peer_id != peer_id:
        raise DemoSetupError(
            f"--bootstrap-address names PeerID {maddr.peer_id}, but {identity_path} holds {peer_id}"
        )
    return str(maddr.with_peer_id(peer_id))


def merged_initial_peers(current: list[str], bootstrap: str) -> list[str]:
    """`bootstrap` first, then the current peers that are not an older identity at the same address."""
    where = Multiaddr.parse(bootstrap).without_peer_id()
    others = [address for address in current if Multiaddr.parse(address).without_peer_id() != where]
    return [bootstrap, *others]


def _organizer(session: Session, config: DemoSetupConfig, result: DemoSetupResult) -> User:
    user = get_user_by_username(session, username=config.organizer_username)
    if user is None:
        if not config.organizer_password:
            raise DemoSetupError(
                f"the organizer {config.organizer_username!r} does not exist yet: give its password in "
                "HIVEMIND_SITE_ORGANIZER_PASSWORD (at least 10 characters)"
            )
        user = create_user(
            session,
            email=config.organizer_email,
            username=config.organizer_username,
            password=config.organizer_password,
            role="organizer",
        )
        result.created.append(f"organizer {user.username}")
    elif not user.can_organize:
        raise DemoSetupError(f"the account {user.username!r} exists but is a {user.role}, not an organizer")
    return user


def settings_with(run: Run, **changes: Any) -> RunSettings:
    """The run's current settings with `changes` applied, for `update_run`."""
    values = {name: getattr(run, name) for name in RunSettings.model_fields if hasattr(run, name)}
    values["recipe"] = {"name": run.recipe_name, "config": run.recipe_config}
    return RunSettings.model_validate({**values, **changes})


def _ensure_run(
    session: Session, config: DemoSetupConfig, owner: User, secret_key: str, result: DemoSetupResult
) -> Run:
    bootstrap = None
    if config.bootstrap_address is not None:
        bootstrap = bootstrap_maddr(config.bootstrap_address, config.bootstrap_identity)
    run = session.scalar(select(Run).where(Run.slug == config.slug))
    if run is None:
        data = RunCreate(
            slug=config.slug,
            name="Demo: a tiny GPT on this project's docs",
            description="A **char-transformer** trained by the volunteers of a Docker Compose demo.",
            recipe=DEMO_RECIPE,
            target_batch_size=256,
            optimizer={"lr": 0.003},
            averaging={"min_matchmaking_time": 1.0, "averaging_timeout": 10},
            auth_mode=AuthMode.open,  # a token run would need a token for the bootstrap node too
            initial_peers=[bootstrap] if bootstrap else [],
        )
        result.created.append(f"run {config.slug}")
        return create_run(session, owner=owner, data=data, secret_key=secret_key)
    check_can_manage(run, owner)
    if bootstrap is not None:
        peers = merged_initial_peers(list(run.initial_peers), bootstrap)
        if peers != list(run.initial_peers):
            update_run(session, run=run, data=settings_with(run, initial_peers=peers))
            result.created.append(f"initial peers of run {config.slug}")
    return run


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK_BYTES):
        yield data[start : start + _CHUNK_BYTES]


def _ensure_dataset(session: Session, run: Run, settings: Settings, result: DemoSetupResult) -> None:
    if run.dataset is not None:
        return
    corpus = demo_corpus()
    upload = store_upload(
        session,
        run=run,
        chunks=_chunks(corpus),
        filename="docs.txt",
        data_format="text",
        upload_dir=settings.upload_dir,
        max_bytes=settings.max_upload_bytes,
    )
    dataset = asyncio.run(upload)
    result.created.append(f"dataset of run {run.slug} ({dataset.size_bytes} bytes, sha256 {dataset.sha256})")


def setup_demo(settings: Settings, config: DemoSetupConfig) -> DemoSetupResult:
    """Make sure the demo's organizer, run and dataset exist (see the module docstring)."""
    from backend.db import make_engine, make_session_factory
    from backend.migrate import upgrade

    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    result = DemoSetupResult(run_url=f"{settings.public_url}/runs/{config.slug}", initial_peers=[])
    try:
        with make_session_factory(engine)() as session:
            organizer = _organizer(session, config, result)
            run = _ensure_run(session, config, organizer, settings.resolved_secret_key(), result)
            _ensure_dataset(session, run, settings, result)
            result.initial_peers = list(run.initial_peers)
            session.commit()
    finally:
        engine.dispose()
    logger.info("Demo set up at %s; created or changed: %s", result.run_url, result.created or "nothing")
    return result


def demo_setup_command(
    slug: Annotated[str, typer.Option(help="The demo run's slug.")] = DEMO_SLUG,
    organizer_email: Annotated[str, typer.Option(help="The organizer's email.")] = "organizer@example.org",
    organizer_username: Annotated[str, typer.Option(help="The organizer's username.")] = "organizer",
    organizer_password: Annotated[
        str | None,
        typer.Option(
            envvar="HIVEMIND_SITE_ORGANIZER_PASSWORD",
            show_default=False,
            help="Password for a new organizer account (prefer the environment variable).",
        ),
    ] = None,
    bootstrap_address: Annotated[
        str | None,
        typer.Option(help="Multiaddr of the bootstrap DHT node, e.g. /dns4/bootstrap/tcp/31337."),
    ] = None,
    bootstrap_identity: Annotated[
        Path | None,
        typer.Option(help="The bootstrap node's key file: its PeerID completes --bootstrap-address."),
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="Overrides DATABASE_URL.")] = None,
) -> None:
    """Create the demo organizer and an open demo run with the bundled corpus, unless they exist."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bootstrap_identity is not None and bootstrap_address is None:
        typer.echo("error: --bootstrap-identity needs --bootstrap-address", err=True)
        raise typer.Exit(2)
    config = DemoSetupConfig(
        slug, organizer_email, organizer_username, organizer_password, bootstrap_address, bootstrap_identity
    )
    try:
        settings = Settings(database_url=database_url) if database_url else Settings()
        result = setup_demo(settings, config)
    except (DemoSetupError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except SiteError as e:
        details = "; ".join(f"{k}: {v}" for k, v in getattr(e, "fields", {}).items())
        typer.echo(f"error: {e.message} {details}".rstrip(), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"demo run: {result.run_url}")
    typer.echo(f"initial peers: {' '.join(result.initial_peers) or '(none)'}")
    typer.echo(f"created or changed: {', '.join(result.created) or 'nothing (already set up)'}")
