"""`hivemind-site create-user` (serve is exercised by the browser test, which starts it for real)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from backend.cli import app
from backend.db import make_engine
from backend.models import User

runner = CliRunner()


def test_create_admin_with_password_on_stdin(tmp_path, monkeypatch):
    monkeypatch.setenv("HIVEMIND_SITE_SECRET_KEY_FILE", str(tmp_path / "secret"))
    url = f"sqlite:///{tmp_path / 'site.db'}"
    result = runner.invoke(
        app,
        ["create-user", "root@example.org", "--admin", "--password-stdin", "--database-url", url],
        input="a long admin password\n",
    )
    assert result.exit_code == 0, result.output
    assert "created admin root" in result.output
    engine = make_engine(url)
    with Session(engine) as session:
        user = session.scalar(select(User))
        assert user.role == "admin" and user.username == "root"
        assert "a long admin password" not in user.password_hash
    engine.dispose()
    again = runner.invoke(
        app,
        ["create-user", "root@example.org", "--password-stdin", "--database-url", url],
        input="x" * 12 + "\n",
    )
    assert again.exit_code == 1 and "already exists" in again.output


def test_weak_password_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'site.db'}"
    result = runner.invoke(
        app, ["create-user", "a@example.org", "--password-stdin", "--database-url", url], input="short\n"
    )
    assert result.exit_code == 1 and "password" in result.output
