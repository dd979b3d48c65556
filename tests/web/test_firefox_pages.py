"""The playground and the dashboard in a real Firefox, driven through Marionette.

Firefox uses the service under test as its push service; Marionette opens the pages,
reads their DOM and takes the screenshots that the README shows. What the pages claim
is checked against the service itself: the demo send's status, the store (the
message was acknowledged, so it is gone) and /api/stats.

Screenshots go to the test's tmp_path; with TIDINGS_UPDATE_SCREENSHOTS=1 they are
written to docs/img/ as well.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from marionette_client import Marionette
from PIL import Image

from support.ci import free_port
from support.firefox import FirefoxFactory, FirefoxPushClient
from support.service import REPO, RunningService, running_service

pytestmark = [pytest.mark.firefox, pytest.mark.timeout(240)]

DOC_IMAGES = REPO / "docs" / "img"


def check_screenshot(png: bytes, name: str, tmp_path: Path) -> Image.Image:
    """Decode the PNG, insist it is a real picture (not blank), save it."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    assert width >= 300 and height >= 300, image.size
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 50, f"{name}: only {len(colours)} colours, looks blank"
    most = max(count for count, _ in colours)
    assert most < 0.97 * width * height, f"{name}: one colour covers nearly everything"
    (tmp_path / name).write_bytes(png)
    if os.environ.get("TIDINGS_UPDATE_SCREENSHOTS"):
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOC_IMAGES / name).write_bytes(png)
    return image


async def wait_connected(service: RunningService, count: int = 1, timeout: float = 45) -> None:
    assert service.service is not None
    deadline = time.monotonic() + timeout
    while len(service.service.hub) < count:
        assert time.monotonic() < deadline, "Firefox did not connect to the push service"
        await asyncio.sleep(0.05)


async def open_firefox(
    service: RunningService, firefox_client: FirefoxFactory
) -> tuple[FirefoxPushClient, Marionette]:
    port = free_port()
    # Marionette applies "recommended" automation prefs, among them
    # dom.push.connection.enabled = false; keep the profile's own prefs instead.
    prefs = {"marionette.port": port, "remote.prefs.recommended": False}
    firefox = firefox_client(service.ws_url, prefs=prefs, extra_args=("--marionette",))
    await firefox.start()
    marionette = Marionette(port)
    await marionette.connect()
    return firefox, marionette


async def stats(service: RunningService, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get("/api/stats", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())


async def test_playground_subscribes_sends_and_receives(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    text = "Hello from the playground ✓"
    async with running_service(tmp_path, demo=True) as service:
        assert service.service is not None
        _firefox, page = await open_firefox(service, firefox_client)
        await wait_connected(service)
        await page.navigate(f"{service.url}/playground/?subscribe=1&send={quote(text)}")
        await page.wait_for(
            "return document.body.dataset.received", timeout=90, what="the push in the page"
        )
        received = await page.execute("return document.getElementById('received').innerText")
        assert text in received
        shown = await page.execute("return document.getElementById('send-result').innerText")
        assert "answered: 201" in shown and "location:" in shown

        # The service agrees: one push accepted, sent, acknowledged, no longer stored.
        async with httpx.AsyncClient(base_url=service.url) as client:
            recent = (await client.get("/api/demo/recent")).json()["sends"]
        assert [s["status"] for s in recent] == [201]
        deadline = time.monotonic() + 10
        while await service.service.store.count_messages():
            assert time.monotonic() < deadline, "the message was never acknowledged"
            await asyncio.sleep(0.05)
        figures = await stats(service)
        assert figures["totals"]["pushes"] == {"201": 1}
        assert figures["totals"]["deliveries"] == 1
        assert figures["totals"]["acks"] == {"100": 1}

        # The commands shown name this subscription's key file and subject.
        commands = await page.execute("return document.getElementById('cmd-tidings').innerText")
        assert "tidings send --key" in commands and "tidings-demo-vapid.pem" in commands
        await page.execute("document.getElementById('build-curl').click()")
        curl = await page.wait_for(
            "const t = document.getElementById('cmd-curl').innerText;"
            "return t.startsWith('curl') ? t : null",
            what="the curl command",
        )
        assert "--data-binary @body.bin" in curl and service.url + "/push/" in curl

        check_screenshot(await page.screenshot(), "playground.png", tmp_path)
        await page.set_window_size(400, 900)
        check_screenshot(await page.screenshot(), "playground-phone.png", tmp_path)

        # Unsubscribe: the service then answers 410 for that subscription.
        subscription = json.loads(
            await page.execute("return document.getElementById('sub-json').textContent")
        )
        await page.execute("document.getElementById('unsubscribe').click()")
        await page.wait_for(
            "return document.body.dataset.state === 'unsubscribed'", what="unsubscribe"
        )
        async with httpx.AsyncClient(base_url=service.url) as client:
            answer = await client.post(
                "/demo/send", json={"subscription": subscription, "payload": "too late"}
            )
        assert answer.status_code == 200
        assert answer.json()["response"]["status"] == 410
        await page.quit()


async def test_dashboard_shows_the_figures(tmp_path: Path, firefox_client: FirefoxFactory) -> None:
    token = "s3cret-dashboard-token"
    async with running_service(tmp_path, dashboard_token=token) as service:
        agent = await service.agent()
        registration = await agent.register()
        # A few seconds of uneven traffic, so the charts have something to draw.
        sent = refused = 0
        async with httpx.AsyncClient() as client:
            for second, burst in enumerate((3, 8, 5, 12, 6, 2)):
                started = time.monotonic()
                for _ in range(burst):
                    response = await client.post(registration.endpoint, headers={"ttl": "60"})
                    assert response.status_code == 201
                    await agent.next_notification()
                    sent += 1
                if second % 2:
                    bad = await client.post(service.url + "/push/not-a-token", headers={"ttl": "0"})
                    assert bad.status_code == 404
                    refused += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        _firefox, page = await open_firefox(service, firefox_client)
        await wait_connected(service, 2)
        await page.navigate(f"{service.url}/dashboard?token={token}")
        await page.wait_for(
            f"return document.getElementById('accepted').textContent === '{sent}'"
            f" && document.getElementById('deliveries').textContent === '{sent}'",
            what="the dashboard's counts",
        )
        figure = "return document.getElementById(arguments[0]).textContent"
        assert await page.execute(figure, "refused") == str(refused)
        assert await page.execute(figure, "acks") == str(sent)
        assert await page.execute(figure, "connections") == "2"
        state = await page.execute("return document.getElementById('state').textContent")
        assert state.startswith("Live")
        paths = await page.execute(
            "return document.querySelectorAll('#chart-pushes path, #chart-deliveries path').length"
        )
        assert paths >= 2
        check_screenshot(await page.screenshot(), "dashboard.png", tmp_path)
        await page.set_window_size(400, 900)
        await asyncio.sleep(0.5)
        check_screenshot(await page.screenshot(), "dashboard-phone.png", tmp_path)

        # Without the token the page itself is refused.
        await page.set_window_size(1280, 900)
        await page.navigate(f"{service.url}/dashboard")
        body = await page.execute("return document.body.innerText")
        assert "token" in body
        await page.quit()
        await agent.close()
