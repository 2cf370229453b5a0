"""hivemind-site: the optional project site (never on the training path).

    backend.settings    Settings from the environment / .env (refuses weak secrets)
    backend.app         create_app(): the FastAPI application
    backend.cli         `hivemind-site serve`, `monitor`, `create-user` and `demo`
    backend.models      the SQLAlchemy tables; backend.db the engine and the declarative base
    backend.migrate     running the Alembic migrations in migrations/
    backend.schemas     request and response bodies
    backend.services    every write: users, sessions, API keys, runs, datasets, access tokens;
                        and the readers of the swarm monitor's data (swarm, leaderboard)
    backend.monitor     the swarm monitor: reads every active run's swarm, stores history,
                        per-peer state and the leaderboard (it writes its own tables)
    backend.api         the REST API under /api/v1, the live WebSocket, Prometheus' /metrics
    backend.checkpoints the swarm's model saved as checkpoints (files, saver) and run seeds
    backend.pages       the browser pages (templates and static files live in web/)
    backend.security    password hashing, API key hashing, CSRF tokens, key encryption at rest
    backend.errors      the error tree

The public API is re-exported here and pinned by tests/backend/test_exported_members.py.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hivemind-platform")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from backend.app import create_app
from backend.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    SiteError,
    TooManyAttempts,
)
from backend.migrate import downgrade, upgrade
from backend.settings import Settings

__all__ = [
    "AuthenticationRequired",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Settings",
    "SiteError",
    "TooManyAttempts",
    "__version__",
    "create_app",
    "downgrade",
    "upgrade",
]
