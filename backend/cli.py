"""The `hivemind-site` command line: `serve` (migrates, then serves) and `create-user`."""

from __future__ import annotations

import getpass
import logging
import sys
from typing import Annotated

import typer

from backend.settings import Settings

app = typer.Typer(
    help="hivemind-site: publish collaborative runs and issue access tokens.", no_args_is_help=True
)


def _settings(database_url: str | None) -> Settings:
    try:
        return Settings(database_url=database_url) if database_url else Settings()
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    database_url: Annotated[str | None, typer.Option(help="Overrides DATABASE_URL.")] = None,
    proxy_headers: Annotated[bool, typer.Option(help="Trust X-Forwarded-* from a local proxy.")] = True,
) -> None:
    """Upgrade the database schema to the newest migration, then serve the site."""
    import uvicorn

    from backend.app import create_app
    from backend.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(database_url)
    upgrade(settings.database_url)
    uvicorn.run(create_app(settings), host=host, port=port, proxy_headers=proxy_headers, log_level="info")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
