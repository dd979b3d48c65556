"""The browser's call page: served by the element, and told the deployment's STUN/TURN
servers through `/hyperty/config` (the Firefox call itself: test_firefox_call.py)."""

from __future__ import annotations

import httpx

from hyperty.helpers import Stack
from tidings.hyperty.http import ElementApp

TURN = {"urls": "turn:turn.example.com:3478", "username": "1700000000:bob", "credential": "x"}


async def get(app: ElementApp, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://element") as client:
        return await client.get(path)


async def test_the_call_page_and_its_ice_servers(stack: Stack) -> None:
    assert (await get(ElementApp(stack.element), "/hyperty/config")).json()["iceServers"] == []
    app = ElementApp(stack.element, ice_servers=[TURN])
    assert (await get(app, "/hyperty/config")).json()["iceServers"] == [TURN]
    page = await get(app, "/hyperty/call.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="call.js">' in page.text
    script = await get(app, "/hyperty/call.js")
    assert script.status_code == 200 and "config.iceServers" in script.text
