"""Fixtures for the site's tests.

Every API test runs against SQLite and PostgreSQL (`db_url` is parametrized). PostgreSQL gets a
fresh database per test run (dropped at the end); each test runs inside a transaction on one
connection that is rolled back afterwards, and the app's request sessions join it through
savepoints, so tests never see each other's rows.

PostgreSQL comes from HIVEMIND_TEST_POSTGRES_URL (default: CI's trust-auth server at
127.0.0.1:5432). Without a reachable server the PostgreSQL cases skip, except under CI=true.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from site_helpers import PASSWORD, run_body
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import backend.security
from backend.api.deps import get_db
from backend.app import create_app
from backend.db import make_engine
from backend.migrate import upgrade
from backend.models import User
from backend.services.api_keys import create_api_key
from backend.services.users import create_user
from backend.settings import Settings

POSTGRES_URL = os.environ.get(
    "HIVEMIND_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TEST_SECRET = "test-secret-" + secrets.token_urlsafe(32)


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing():
    """argon2 with test-sized costs: the same code path, a hundred times faster."""
    original = backend.security._password_hasher
    backend.security._password_hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    backend.security._password_hasher = original


def _fresh_postgres_database() -> Iterator[str]:
    admin_url = make_url(POSTGRES_URL)
    name = f"hivemind_site_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL is not reachable at {admin_url.render_as_string()}: {e.orig}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'site.db'}"
    else:
        yield from _fresh_postgres_database()


@pytest.fixture(scope="session")
def engine(db_url) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


@pytest.fixture
def db(connection) -> Iterator[Session]:
    """A session for arranging and checking rows, inside the test's rolled-back transaction."""
    with Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    ) as session:
        yield session


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return Settings(
        database_url=db_url,
        secret_key=TEST_SECRET,
        secret_key_file=tmp_path / "unused.secret",
        public_url="http://testserver",
        upload_dir=tmp_path / "uploads",
        max_upload_bytes=64 * 1024,
        login_max_failures=3,
        login_lockout_s=60,
        monitor_enabled=False,  # the monitor's tests start it themselves
        monitor_identity_dir=tmp_path / "monitor-keys",
    )


@pytest.fixture
def app(settings, engine, connection):
    app = create_app(settings, engine=engine)

    def _test_db() -> Iterator[Session]:
        with Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    app.dependency_overrides[get_db] = _test_db
    return app


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


class Account:
    """A user made for a test, with a working API key."""

    def __init__(self, user: User, api_key: str):
        self.user = user
        self.api_key = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"}

    @property
    def username(self) -> str:
        return self.user.username


@pytest.fixture
def make_account(db):
    def make(username: str, role: str = "volunteer") -> Account:
        user = create_user(
            db, email=f"{username}@example.org", username=username, password=PASSWORD, role=role
        )
        _, key = create_api_key(db, user=user, name="test")
        db.commit()
        return Account(user, key)

    return make


@pytest.fixture
def organizer(make_account) -> Account:
    return make_account("olga", "organizer")


@pytest.fixture
def volunteer(make_account) -> Account:
    return make_account("victor", "volunteer")


@pytest.fixture
def run(client, organizer) -> dict:
    response = client.post("/api/v1/runs", json=run_body(), headers=organizer.headers)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """A database with no tables at all, for the migration tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        yield from _fresh_postgres_database()
