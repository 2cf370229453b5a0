"""The organizer and volunteer flows in a real browser: Playwright drives Debian's chromium against
`hivemind-site serve` started as a subprocess. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import pytest
from browser_helpers import chromium_browser, needs_chromium, running_site, screenshot

from peer.net.identity import Identity
from peer.net.tokens import AccessToken, TokenAuthorizer

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("site")) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as browser:
        yield browser


_shot = screenshot


def _sign_up(page, site, username, role):
    page.goto(f"{site}/signup")
    page.fill("#email", f"{username}@example.org")
    page.fill("#username", username)
    page.fill("#password", "a long enough password")
    page.check(f"input[name=role][value={role}]")
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(f"{site}/")
    assert f"{username} ({role})" in page.inner_text("header")


def test_organizer_creates_a_run_with_an_upload(browser, site, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    _sign_up(page, site, "olga", "organizer")
    _shot(page, "01-organizer-signed-up")

    dataset = tmp_path / "train.jsonl"
    dataset.write_bytes(b'{"text": "hello"}\n' * 50)
    page.goto(f"{site}/runs/new")
    page.fill("#name", "ALBERT on Wikipedia")
    page.fill("#slug", "Bad Slug")
    page.fill("#description", "# Welcome\n\nTrain **ALBERT** with us.")
    page.fill("#recipe_name", "albert")
    page.fill("#optimizer", '{"name": "adamw", "lr": 0.00176}')
    page.check("input[name=dataset_kind][value=upload]")
    page.set_input_files("#dataset_file", str(dataset))
    page.fill("#dataset_format", "jsonl")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#slug-error")  # htmx swapped the form in place, errors by their fields
    assert "lowercase" in page.inner_text("#slug-error")
    assert page.input_value("#name") == "ALBERT on Wikipedia"
    _shot(page, "02-run-form-error")

    page.fill("#slug", "albert-wiki")
    page.check("input[name=dataset_kind][value=upload]")
    page.set_input_files("#dataset_file", str(dataset))
    page.click("#run-form button[type=submit]")
    page.wait_for_url(f"{site}/runs/albert-wiki")
    assert page.inner_text("#join-command") == f"hivemind-peer join {site}/runs/albert-wiki"
    assert page.inner_text("h1").startswith("ALBERT on Wikipedia")
    assert len(page.inner_text("#dataset-sha256")) == 64
    page.click("button.copy")
    page.wait_for_function("document.querySelector('button.copy').textContent !== 'Copy'")
    _shot(page, "03-run-page")
    context.close()


def test_volunteer_gets_a_token_that_peer_verifies(browser, site):
    context = browser.new_context()
    page = context.new_page()
    _sign_up(page, site, "victor", "volunteer")
    page.goto(f"{site}/account/keys")
    page.fill("#name", "my laptop")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#new-api-key")
    api_key = page.inner_text("#new-api-key").strip()
    assert api_key.startswith("hms_")
    _shot(page, "04-api-key-created")
    context.close()

    identity = Identity.generate()
    response = httpx.post(
        f"{site}/api/v1/runs/albert-wiki/access-tokens",
        json={"peer_public_key": str(identity.peer_id)},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = httpx.get(f"{site}/api/v1/runs/albert-wiki/manifest").json()
    assert manifest["auth"]["authority_public_key"] == body["authority_public_key"]

    async def no_token():
        return None

    authorizer = TokenAuthorizer(manifest["auth"]["authority_public_key"], "albert-wiki", no_token)
    token = AccessToken.from_text(body["token"])
    # playwright's sync API keeps an event loop in this thread: check on a fresh one elsewhere
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, authorizer.check(identity.peer_id, token.to_bytes())).result()
    assert token.username == "victor"
