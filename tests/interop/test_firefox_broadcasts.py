"""A real Firefox follows a Megaphone broadcast served by Tidings (issue 19).

Firefox's push broadcast service (PushBroadcastService.sys.mjs) keeps each followed
id's version in the profile's `broadcast-listeners.json` and sends them in `hello`;
a version is recorded once the id's handler has run. The test adds a listener in
Firefox's chrome context (Marionette) whose handler is harmless (the broadcast
service's own object), so no remote-settings server is needed, then checks that
Firefox records the version the service announces: at subscribe time and after an
operator's change (read through the chrome context and from the profile's file).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from support.ci import free_port
from support.firefox import FirefoxFactory, FirefoxPushClient
from support.service import RunningService, put_broadcast, running_service
from web.marionette_client import Marionette

pytestmark = [pytest.mark.firefox, pytest.mark.timeout(240)]

TOKEN = "firefox-admin"
BROADCAST = "tidings-test/broadcast"
MODULE = "resource://gre/modules/PushBroadcastService.sys.mjs"

# Marionette runs a plain function body and waits for a returned promise.
ADD_LISTENER = f"""return (async () => {{
const {{ pushBroadcastService }} = ChromeUtils.importESModule("{MODULE}");
await pushBroadcastService.addListener(arguments[0], arguments[1],
    {{ moduleURI: "{MODULE}", symbolName: "pushBroadcastService" }});
return true;
}})();"""
RECORDED = f"""return (async () => {{
const {{ pushBroadcastService }} = ChromeUtils.importESModule("{MODULE}");
await pushBroadcastService.initializePromise;
const listener = pushBroadcastService.jsonFile.data.listeners[arguments[0]];
await pushBroadcastService._saveImmediately();
return listener ? listener.version : null;
}})();"""


async def set_version(service: RunningService, version: str) -> None:
    answer = await put_broadcast(service.url, BROADCAST, version, TOKEN)
    assert answer.status_code == 200, answer.text


async def wait_connected(service: RunningService, timeout: float = 60) -> None:
    assert service.service is not None
    deadline = time.monotonic() + timeout
    while len(service.service.hub) < 1:
        assert time.monotonic() < deadline, "Firefox did not connect to the push service"
        await asyncio.sleep(0.05)


async def chrome(marionette: Marionette, script: str, *args: Any) -> Any:
    await marionette.command("Marionette:SetContext", {"value": "chrome"})
    return await marionette.execute(script, *args)


async def wait_recorded(marionette: Marionette, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    recorded = None
    while time.monotonic() < deadline:
        recorded = await chrome(marionette, RECORDED, BROADCAST)
        if recorded == version:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Firefox recorded {recorded!r}, not {version!r}")


def on_disk(profile: Path) -> dict[str, Any]:
    document = json.loads((profile / "broadcast-listeners.json").read_text())
    return dict(document["listeners"])


async def open_firefox(
    service: RunningService, firefox_client: FirefoxFactory
) -> tuple[FirefoxPushClient, Marionette]:
    port = free_port()
    prefs = {"marionette.port": port, "remote.prefs.recommended": False}
    firefox = firefox_client(
        service.ws_url, prefs=prefs, extra_args=("--marionette", "-remote-allow-system-access")
    )
    await firefox.start()
    marionette = Marionette(port)
    await marionette.connect()
    return firefox, marionette


async def test_firefox_records_the_versions_tidings_announces(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    async with running_service(tmp_path, dashboard_token=TOKEN) as service:
        await set_version(service, '"100"')
        firefox, marionette = await open_firefox(service, firefox_client)
        try:
            await wait_connected(service)
            # New listener: Firefox sends broadcast_subscribe with "0"; Tidings answers "100".
            assert await chrome(marionette, ADD_LISTENER, BROADCAST, '"0"')
            await wait_recorded(marionette, '"100"')
            # The operator changes the version: the connected Firefox hears at once.
            await set_version(service, '"101"')
            await wait_recorded(marionette, '"101"')
            assert firefox.profile_dir is not None
            assert on_disk(firefox.profile_dir)[BROADCAST]["version"] == '"101"'
        finally:
            await marionette.quit()
            await firefox.stop()
