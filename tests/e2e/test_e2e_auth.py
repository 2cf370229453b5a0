"""A run that needs access tokens, with a real site (`hivemind-site serve` on a fresh SQLite database):

- a volunteer with a valid API key gets a token from the site, joins and trains;
- a wrong API key, no API key, and an unknown run: a clear message and exit code 2;
- the swarm's peers refuse a peer whose token another authority signed, and one whose token expired
  (checked in-process: such a peer cannot even join the DHT through the training peer), while a peer
  with a token the site issued reads the training peer's progress records.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from e2e_helpers import ENV, FAST_AVERAGING, RECIPE_CONFIG, TRAIN_TEXT, Volunteer, peer_command, wait_for
from sqlalchemy import select

from backend.db import make_engine, make_session_factory
from backend.models import Run
from backend.services.api_keys import create_api_key
from backend.services.runs import run_authority
from backend.services.users import create_user
from peer import DHT
from peer.errors import DHTError
from peer.net.identity import Identity
from peer.net.tokens import AccessToken, AccessTokenAuthority, TokenAuthorizer
from peer.optim import ProgressTracker, run_validators
from peer.runs import load_manifest
from peer.utils.loop import run_coroutine

SLUG = "token-run"
SECRET = "e2e-auth-secret-" + os.urandom(24).hex()
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _site(workdir: Path) -> Iterator[str]:
    """`hivemind-site serve` (it migrates, then serves); yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **ENV,
        "HIVEMIND_SITE_SECRET_KEY": SECRET,
        "HIVEMIND_SITE_PUBLIC_URL": url,
        "HIVEMIND_SITE_UPLOAD_DIR": str(workdir / "uploads"),
        "HIVEMIND_SITE_MONITOR_ENABLED": "false",
    }
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)]
    command += ["--database-url", f"sqlite:///{workdir / 'site.db'}"]
    with (workdir / "site.log").open("w") as log:
        site = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: site.poll() is not None or _healthy(url), timeout=60, what="the site to start")
        assert site.poll() is None, (workdir / "site.log").read_text()
        yield url
    finally:
        site.terminate()
        site.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _accounts(workdir: Path) -> dict[str, str]:
    """An organizer and a volunteer; their API keys."""
    engine = make_engine(f"sqlite:///{workdir / 'site.db'}")
    keys = {}
    try:
        with make_session_factory(engine)() as session:
            for name, role in (("olga", "organizer"), ("victor", "volunteer")):
                email, password = f"{name}@example.org", "e2e password 1234"
                user = create_user(session, email=email, username=name, password=password, role=role)
                keys[name] = create_api_key(session, user=user, name="e2e")[1]
            session.commit()
    finally:
        engine.dispose()
    return keys


def _run_authority(workdir: Path) -> AccessTokenAuthority:
    """The run's token authority, as the site keeps it (to sign a token that has expired)."""
    engine = make_engine(f"sqlite:///{workdir / 'site.db'}")
    try:
        with make_session_factory(engine)() as session:
            run = session.scalars(select(Run).where(Run.slug == SLUG)).one()
            return run_authority(run, secret_key=SECRET)
    finally:
        engine.dispose()


def _create_token_run(site: str, organizer_key: str) -> None:
    headers = {"Authorization": f"Bearer {organizer_key}"}
    body = {
        "slug": SLUG,
        "name": "Tokens required",
        "recipe": {"name": "char-transformer", "config": RECIPE_CONFIG},
        "target_batch_size": 32,
        "optimizer": {"lr": 0.003},
        "averaging": FAST_AVERAGING,
        "auth_mode": "volunteers",
    }
    response = httpx.post(f"{site}/api/v1/runs", json=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    response = httpx.put(
        f"{site}/api/v1/runs/{SLUG}/dataset",
        params={"filename": "docs.txt", "format": "text"},
        content=TRAIN_TEXT,
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _member(site: str, address: str, token: AccessToken | None, identity: Identity, workdir: Path) -> DHT:
    """An in-process DHT peer of the run that presents `token` (None: one the site issues it)."""
    manifest = load_manifest(f"{site}/runs/{SLUG}")
    assert manifest.auth.mode == "token" and manifest.auth.authority_public_key
    presented = token.to_bytes() if token is not None else None

    async def provide() -> bytes | None:
        return presented

    key_file = workdir / f"{identity.peer_id.short()}.key"
    identity.save(key_file)
    return DHT(
        initial_peers=[address],
        client_mode=True,
        identity_path=key_file,
        authorizer=TokenAuthorizer(manifest.auth.authority_public_key, SLUG, provide),
        record_validators=run_validators(SLUG),
    )


def _site_token(site: str, api_key: str, identity: Identity) -> AccessToken:
    response = httpx.post(
        f"{site}/api/v1/runs/{SLUG}/access-tokens",
        json={"peer_public_key": str(identity.peer_id)},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    return AccessToken.from_text(response.json()["token"])


def test_only_peers_with_a_valid_token_take_part(tmp_path: Path) -> None:
    with _site(tmp_path) as site:
        keys = _accounts(tmp_path)
        _create_token_run(site, keys["olga"])
        run_url = f"{site}/runs/{SLUG}"
        no_token_env = {k: v for k, v in ENV.items() if k != "HIVEMIND_TOKEN"}
        refused = {  # these three run while the volunteer below starts
            "wrong key": _join(run_url, tmp_path / "wrong", "--token", "hms_not-a-real-key"),
            "no key": _join(run_url, tmp_path / "none", env=no_token_env),
            "unknown run": _join(f"{site}/runs/no-such-run", tmp_path / "unknown", "--token", keys["victor"]),
        }
        victor = Volunteer.start(run_url, tmp_path, "victor", "--token", keys["victor"])
        try:
            outputs = {case: process.communicate(timeout=120) for case, process in refused.items()}
            for case, process in refused.items():
                assert process.returncode == 2, (case, outputs[case])
            assert "the site refused an access token (401)" in outputs["wrong key"][1]
            assert "Check your API key" in outputs["wrong key"][1]
            assert "needs an access token" in outputs["no key"][1]
            assert "has no run at" in outputs["unknown run"][1] and "404" in outputs["unknown run"][1]
            _check_the_swarm_admits_only_valid_tokens(site, keys["victor"], victor, tmp_path)
        finally:
            code = victor.stop()
        assert code == 0, victor.output()[-3000:]
        assert victor.left_at_epoch() >= 2


def _join(run_url: str, data_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    command = peer_command("join", run_url, "--data-dir", str(data_dir), "--max-steps", "5", *args)
    pipe = subprocess.PIPE
    return subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env or ENV)


def _check_the_swarm_admits_only_valid_tokens(site: str, api_key: str, victor: Volunteer, workdir: Path):
    wait_for(lambda: "reachable at" in victor.output(), timeout=90, what="the volunteer to join")
    addresses = re.findall(r"reachable at (\S+)", victor.output())
    address = next((a for a in addresses if "/127.0.0.1/" in a), addresses[0])
    # a peer with a token the site issued is a member: it reads victor's progress as he trains
    member_identity = Identity.generate()
    member = _member(site, address, _site_token(site, api_key, member_identity), member_identity, workdir)
    try:
        tracker = ProgressTracker(member, SLUG, target_batch_size=32)

        def victor_epoch() -> int:
            records = run_coroutine(tracker.afetch()).peers
            return max((record.epoch for record in records.values()), default=-1)

        wait_for(lambda: victor_epoch() >= 2, timeout=90, what="the volunteer to train two epochs")
    finally:
        member.shutdown()
    # a token another authority signed, and one that expired an hour ago: refused in the handshake
    forger = Identity.generate()
    forged = AccessTokenAuthority.generate().issue("mallory", forger.peer_id, SLUG)
    with pytest.raises(DHTError, match="not signed by run 'token-run''s authority"):
        _member(site, address, forged, forger, workdir).shutdown()
    late = Identity.generate()
    an_hour_ago = time.time() - 3600
    expired = _run_authority(workdir).issue("victor", late.peer_id, SLUG, lifetime=600, now=an_hour_ago)
    with pytest.raises(DHTError, match="expired"):
        _member(site, address, expired, late, workdir).shutdown()
