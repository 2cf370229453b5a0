"""The run page is live in a real browser: `hivemind-site serve` runs its monitor against a real
swarm (DHT peers in this process publishing signed progress, as `hivemind-peer join` does), and the
page updates by itself, with no reload, when a new peer starts publishing. Screenshots go to
test-artifacts/browser/."""

from __future__ import annotations

import time

import httpx
import pytest
from browser_helpers import chromium_browser, needs_chromium, running_site, screenshot
from site_helpers import PASSWORD

from backend.db import make_engine, make_session_factory
from backend.services.api_keys import create_api_key
from backend.services.users import create_user
from peer import __version__ as peer_version
from peer.dht import DHT, DHTConfig, get_dht_time
from peer.optim.progress import PeerRecord, ProgressRecord, ProgressTracker, run_validators
from peer.utils.loop import run_coroutine

pytestmark = [pytest.mark.slow, needs_chromium]

SLUG = "live-run"
TARGET = 512
CONFIG = DHTConfig(request_timeout=2.0)


class Peer:
    """A volunteer as far as the site can tell: a DHT peer publishing signed progress records."""

    def __init__(self, initial_peers: list[str], username: str | None = None):
        self.username = username  # what the peer declares of itself: never trusted
        self.dht = DHT(initial_peers, record_validators=run_validators(SLUG), config=CONFIG)
        self.tracker = ProgressTracker(self.dht, SLUG, TARGET)
        self.short_id = self.dht.peer_id.to_base58()[:10]
        self.total = 0

    def publish(self, *, epoch: int, loss: float, speed: float = 40.0, step: int = 200) -> None:
        self.total += step
        record = ProgressRecord(
            epoch=epoch,
            samples_accumulated=self.total % TARGET,
            samples_per_second=speed,
            loss=loss,
            mini_steps=self.total // 8,
            total_samples=self.total,
            time=get_dht_time(),
        )
        run_coroutine(self.tracker.apublish(record))
        info = PeerRecord(
            version=peer_version,
            maddrs=self.dht.get_visible_maddrs()[:2],
            device="cpu",
            username=self.username,
        )
        run_coroutine(self.tracker.apublish_peer(info))


def _create_open_run(workdir, base_url: str, initial_peers: list[str]) -> None:
    engine = make_engine(f"sqlite:///{workdir / 'site.db'}")
    try:
        with make_session_factory(engine)() as session:
            olga = create_user(
                session, email="olga@example.org", username="olga", password=PASSWORD, role="organizer"
            )
            _, key = create_api_key(session, user=olga, name="test")
            session.commit()
    finally:
        engine.dispose()
    body = {
        "slug": SLUG,
        "name": "Live run",
        "recipe": {"name": "char-transformer", "config": {}},
        "target_batch_size": TARGET,
        "auth_mode": "open",
        "initial_peers": initial_peers,
    }
    response = httpx.post(f"{base_url}/api/v1/runs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 201, response.text


def _points(page) -> int:
    return int(page.get_attribute("#live", "data-chart-points") or 0)


def test_run_page_updates_itself_when_a_peer_starts_publishing(tmp_path):
    bootstrap = DHT([], record_validators=run_validators(SLUG), config=CONFIG)
    peers: list[Peer] = []
    env = {"HIVEMIND_SITE_MONITOR_ENABLED": "true", "HIVEMIND_SITE_MONITOR_INTERVAL_S": "1"}
    env["HIVEMIND_SITE_MONITOR_IDENTITY_DIR"] = str(tmp_path / "monitor-keys")
    env["HIVEMIND_SITE_LIVE_POLL_INTERVAL_S"] = "0.3"
    try:
        with running_site(tmp_path, **env) as site, chromium_browser() as browser:
            _create_open_run(tmp_path, site, bootstrap.get_visible_maddrs())
            first = Peer(bootstrap.get_visible_maddrs())
            peers.append(first)
            first.publish(epoch=1, loss=4.0)

            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            failed: list[str] = []  # every resource the page loads exists
            page.on("response", lambda response: response.status >= 400 and failed.append(response.url))
            page.goto(f"{site}/runs/{SLUG}")
            page.wait_for_selector("#live[data-connected='true']")
            # the monitor reads the first peer; the page shows it without a reload
            page.wait_for_selector(f"#peer-rows td[title^='{first.short_id}']", timeout=60_000)
            screenshot(page, "10-live-run-one-peer")
            points_before = _points(page)
            url_before = page.url

            second = Peer(bootstrap.get_visible_maddrs(), username="mallory")
            peers.append(second)
            deadline = time.monotonic() + 60
            loss = 3.5
            while time.monotonic() < deadline:
                first.publish(epoch=2, loss=loss)
                second.publish(epoch=2, loss=loss)
                loss *= 0.95
                if (
                    page.query_selector(f"#peer-rows td[title^='{second.short_id}']")
                    and _points(page) > points_before
                ):
                    break
                page.wait_for_timeout(700)
            assert page.query_selector(f"#peer-rows td[title^='{second.short_id}']"), (
                "the new peer never appeared"
            )
            assert _points(page) > points_before, "the charts got no new points"
            assert page.url == url_before
            assert page.inner_text("#stat-peers") == "2"
            assert page.inner_text("#stat-epoch") == "2"
            assert page.query_selector("#chart-loss canvas"), "uPlot drew no chart"
            # a declared username is shown as such on an open run, never as a credited user
            assert "mallory (unverified)" in page.inner_text(
                f"#peer-rows tr:has(td[title^='{second.short_id}'])"
            )
            assert not page.is_visible("#live-waiting")  # "not read yet" is gone once data arrived
            assert not errors, errors
            assert not failed, failed
            icon = page.get_attribute("link[rel='icon']", "href")  # chromium fetches it outside the page
            assert icon and page.request.get(icon if icon.startswith("http") else f"{site}{icon}").ok
            screenshot(page, "11-live-run-two-peers")
    finally:
        for peer in peers:
            peer.dht.shutdown()
        bootstrap.shutdown()
