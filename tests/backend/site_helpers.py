"""Helpers shared by the site's tests (fixtures live in conftest.py)."""

from __future__ import annotations

import re
import socket

from fastapi.testclient import TestClient

from backend.demo import BOOTSTRAP_PORT_OFFSET, _port_in_use

PASSWORD = "correct horse battery"


def run_body(slug: str = "demo", **overrides) -> dict:
    body = {
        "slug": slug,
        "name": "Demo run",
        "description": "Train **ALBERT** together.",
        "recipe": {"name": "albert", "config": {"seq_len": 512}},
        "target_batch_size": 4096,
        "optimizer": {"name": "adamw", "lr": 0.00176},
        "averaging": {"target_group_size": 16},
        "compression": {"gradients": "float16"},
        "auth_mode": "volunteers",
        "allowlist": [],
        "initial_peers": [],
    }
    body.update(overrides)
    return body


def csrf_token(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client: TestClient, email: str, password: str = PASSWORD):
    token = csrf_token(client)
    return client.post(
        "/login", data={"csrf_token": token, "email": email, "password": password}, follow_redirects=False
    )


def demo_port_pair() -> int:
    """A free port P for `hivemind-site demo --port P` whose bootstrap port, P + 1337, is free too."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + BOOTSTRAP_PORT_OFFSET <= 65535 and not _port_in_use(port + BOOTSTRAP_PORT_OFFSET):
            return port
    raise RuntimeError("no free pair of ports")
