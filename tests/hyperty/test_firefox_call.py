"""A real Firefox answers a call with media from the Python runtime (issue 18).

Firefox's page gathers ICE candidates only on the interfaces of the default routes, so
on a machine with a network interface it offers no 127.0.0.1 candidate and the call
page hangs up before ICE (the media part is then xfail); the last test runs the call
again in a network namespace whose only interface, and default route, is loopback,
where the frames must flow.

The caller is a Python runtime (aiortc: a tone and a test pattern); the callee is
headless Firefox with fake camera and microphone, registered through the element's
/hyperty/ page, whose tab then goes away: only its service worker is left. The
invitation is pushed; the service worker shows "Incoming call from Alice". The test
clicks that notification in Firefox's own alert window (chrome context, Marionette):
Firefox fires `notificationclick` in the service worker, which opens call.html
(`clients.openWindow`, allowed because it is a notification click). The page answers
with `getUserMedia` and `RTCPeerConnection`; the signals travel as reTHINK `update`s
through the element. Both sides must decode frames (Firefox: `getStats` inbound-rtp
`framesDecoded`; aiortc: frames received), all over 127.0.0.1, and the caller's hang-up
must end the page's call and put the runtime back to sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hyperty.helpers import Stack, wait_for
from support.ci import free_port, require
from support.firefox import FIREFOX, FirefoxFactory, FirefoxPushClient, PageServer
from tidings.hyperty import object_url
from tidings.hyperty.connector import Connector
from web.marionette_client import Marionette

pytest.importorskip("aiortc")
pytestmark = [pytest.mark.firefox, pytest.mark.timeout(240)]

#: Fake devices, no prompts, and ICE on the loopback interface only (the machine's
#: other interfaces must never be a target).
MEDIA_PREFS: dict[str, Any] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.force_interface": "lo",
    "media.peerconnection.ice.obfuscate_host_addresses": False,
}

#: A network namespace with only the loopback interface, the default route through it:
#: there Firefox's page gathers 127.0.0.1 (it gathers on the default route's interface),
#: and nothing can reach any other address. Set up by the last test of this file.
NAMESPACE_SETUP = "ip link set lo up && ip route add default dev lo src 127.0.0.1"
IN_LOOPBACK_NAMESPACE = os.environ.get("TIDINGS_LOOPBACK_NETNS") == "1"

# Chrome context: click the alert window Firefox shows for a notification (titled
# arguments[0]): a click event on its text, which the alert's own handler turns into
# the notification's click (alerts/alert.js). True when such a window was found.
CLICK_ALERT = """
for (const win of Services.wm.getEnumerator("alert:alert")) {
  if (!win.arguments || win.arguments[1] !== arguments[0]) continue;
  const label = win.document.getElementById("alertTextLabel");
  label.dispatchEvent(new win.MouseEvent("click", {bubbles: true, view: win}));
  return true;
}
return false;
"""


async def open_callee(
    stack: Stack, firefox_client: FirefoxFactory, reports: PageServer
) -> tuple[FirefoxPushClient, Marionette, str]:
    """Firefox with the element's page registered (runtime, hyperty, subscription), then
    the tab moved away: the runtime is asleep, its service worker is all that is left."""
    port = free_port()
    firefox = firefox_client(
        stack.service.ws_url,
        page_server=reports,
        start_url=f"{stack.server.url}/hyperty/?report={reports.url}",
        prefs={**MEDIA_PREFS, "marionette.port": port, "remote.prefs.recommended": False},
        extra_args=("--marionette", "-remote-allow-system-access"),
    )
    await firefox.start()
    marionette = Marionette(port)
    await marionette.connect()
    registered = await firefox.wait_report("subscription", 60, what="page registration")
    await marionette.navigate("about:blank")
    return firefox, marionette, str(registered["hyperty"])


async def click_notification(marionette: Marionette, title: str) -> None:
    await marionette.command("Marionette:SetContext", {"value": "chrome"})
    try:
        found = await wait_for_value(lambda: marionette.execute(CLICK_ALERT, title))
        assert found, f"no alert window titled {title!r}"
    finally:
        await marionette.command("Marionette:SetContext", {"value": "content"})


async def click_hang_up(marionette: Marionette) -> None:
    """Click Hang up on the call page (the tab the notification click opened)."""
    await marionette.command("Marionette:SetContext", {"value": "content"})
    handles = await marionette.command("WebDriver:GetWindowHandles")
    for handle in handles if isinstance(handles, list) else handles["value"]:
        await marionette.command("WebDriver:SwitchToWindow", {"handle": handle})
        if "/call.html" in await marionette.execute("return location.pathname"):
            await marionette.execute("document.getElementById('hangup').click()")
            return
    raise AssertionError("no call page is open")


async def wait_for_value(probe: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await probe()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return value


async def call_report(firefox: FirefoxPushClient, event: str, timeout: float) -> dict[str, Any]:
    report = await firefox.wait_report("call", timeout, what=f"call page {event}")
    assert report["event"] == event, (report, firefox.log_tail(100))
    return report


async def no_loopback_candidate(
    stack: Stack, alice: Connector, hyperty: str, connection: str, ended: dict[str, Any]
) -> None:
    """The page found no 127.0.0.1 candidate, so it hung up rather than let ICE use
    another interface: check that it did so cleanly, then mark the media part xfail
    (in the loopback namespace it must not happen: a failure there)."""
    assert not IN_LOOPBACK_NAMESPACE, f"no loopback candidate in the namespace: {ended}"
    assert ended["reason"] == "no loopback ICE candidate", ended
    assert ended["offerAnswered"] is True  # the offer and the answer went through
    assert ended["candidates"]["sent"] == []  # nothing but loopback is ever sent
    gathered = ended["candidates"]["gathered"]
    assert gathered and not any(c.split()[4] == "127.0.0.1" for c in gathered), gathered
    await wait_for(lambda: connection in alice.ended, 30)
    assert alice.ended[connection].reason == "hung up by the peer"
    assert alice.calls == {} and not alice.context.runtime.busy
    await wait_for(lambda: stack.element.status(hyperty) == "disconnected", 10)
    addresses = sorted({c.split()[4] for c in gathered})
    pytest.xfail(
        f"this Firefox gathers ICE host candidates only on {addresses} in a page (the "
        "default routes' interfaces, no 127.0.0.1): no media here; the namespace test "
        "below runs this test where loopback is the default route"
    )


@pytest.mark.parametrize("hangs_up", ["caller", "callee"])
async def test_firefox_answers_a_call_with_media(
    stack: Stack, firefox_client: FirefoxFactory, hangs_up: str
) -> None:
    reports = PageServer()
    reports.start()
    try:
        firefox, marionette, hyperty = await open_callee(stack, firefox_client, reports)
        assert stack.element.status(hyperty) == "disconnected"  # asleep: pushed to
        _, alice = await stack.caller()
        alice.loopback = True
        invitation = alice.invitation(hyperty, media=True)
        connection = object_url(invitation.from_)
        calling = asyncio.create_task(alice.call(hyperty, invitation=invitation, timeout=90))

        shown = await firefox.next_push_report(30)
        assert shown["shown"] == {
            "title": "Incoming call from Alice",
            "body": "alice@example.com",
            "tag": connection,
        }
        await click_notification(marionette, "Incoming call from Alice")

        # The click opened the call page, which holds the inbox and answers 200.
        answered = await call_report(firefox, "answered", 60)
        assert answered["connection"] == connection and answered["hyperty"] == hyperty
        answer = await asyncio.wait_for(calling, 60)
        assert answer.code == 200 and (answer.value or {}).get("media") is True, answer

        outcome = await firefox.wait_report("call", 60, what="the call page's media")
        if outcome["event"] == "ended":
            await no_loopback_candidate(stack, alice, hyperty, connection, outcome)
        assert outcome["event"] == "media", (outcome, firefox.log_tail(100))

        # Frames decoded on both sides, over 127.0.0.1.
        stats = outcome["stats"]
        assert stats["video"]["framesDecoded"] > 0 and stats["audio"]["packetsReceived"] > 0
        assert stats["pair"] == {"local": "127.0.0.1", "remote": "127.0.0.1"}, stats
        sent = outcome["candidates"]["sent"]
        assert sent and all(c.split()[4] == "127.0.0.1" for c in sent), outcome["candidates"]
        active = alice.calls[connection]
        await asyncio.wait_for(active.media.first_frames.wait(), 60)
        frames = active.media.stats.frames_received
        assert frames["audio"] > 0 and frames["video"] > 0, frames

        # Either side hangs up: both release the media, and the page leaves the inbox
        # (the runtime is asleep again).
        if hangs_up == "caller":
            assert await alice.hangup(connection)
        else:
            await click_hang_up(marionette)
        ended = await call_report(firefox, "ended", 30)
        assert ended["reason"] == ("hung up by the peer" if hangs_up == "caller" else "hung up")
        await wait_for(lambda: connection in alice.ended, 30)
        reason = "hung up" if hangs_up == "caller" else "hung up by the peer"
        assert alice.ended[connection].reason == reason
        assert ended["stats"]["video"]["framesDecoded"] >= stats["video"]["framesDecoded"]
        await wait_for(lambda: stack.element.status(hyperty) == "disconnected", 10)
        assert alice.calls == {} and not alice.context.runtime.busy
        await marionette.close()
    finally:
        reports.stop()


async def test_a_cancelled_call_is_missed_and_cannot_be_answered(
    stack: Stack, firefox_client: FirefoxFactory
) -> None:
    """The caller hangs up before the answer: the cancel push (same Topic) turns the
    ringing notification into a missed call, clicking that opens nothing, and the call
    page at the URL a click would have opened finds no ringing call to answer."""
    reports = PageServer()
    reports.start()
    try:
        firefox, marionette, hyperty = await open_callee(stack, firefox_client, reports)
        _, alice = await stack.caller()
        invitation = alice.invitation(hyperty, media=True)
        connection = object_url(invitation.from_)
        sent = await alice.invite(invitation)
        assert sent is not None and sent.code == 100  # pushed
        ringing = await firefox.next_push_report(30)
        assert ringing["shown"]["title"] == "Incoming call from Alice"

        cancel = await alice.cancel(invitation)
        assert cancel is not None and cancel.code == 100
        missed = await firefox.next_push_report(30)
        shown = {"title": "Missed call", "body": "Alice called", "tag": connection}
        assert missed["type"] == "delete" and missed["shown"] == shown
        assert missed["notifications"] == [shown]  # replaced, not added

        await click_notification(marionette, "Missed call")
        await asyncio.sleep(2)
        assert reports.take_report("call") is None  # no call page answered anything
        page = f"{stack.server.url}/hyperty/call.html?connection={quote(connection, safe='')}"
        await marionette.navigate(f"{page}&report={quote(reports.url, safe='')}")
        error = await call_report(firefox, "error", 30)
        assert error["message"] == f"Error: no ringing call {connection}"
        await marionette.close()
    finally:
        reports.stop()


def test_firefox_answers_a_call_with_media_in_a_loopback_network_namespace() -> None:
    """The media calls above (either side hanging up), run again in a network namespace
    of its own whose only interface is loopback (and the default route through it),
    where Firefox's page does gather 127.0.0.1: there frames must be decoded on both
    sides (no xfail)."""
    if IN_LOOPBACK_NAMESPACE:
        pytest.skip("already in the namespace")
    require(shutil.which(FIREFOX) is not None, FIREFOX)
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", NAMESPACE_SETUP], capture_output=True, timeout=30
    )
    require(probe.returncode == 0, f"a network namespace (unshare --net: {probe.stderr!r})")
    target = f"{Path(__file__)}::test_firefox_answers_a_call_with_media"
    inner = f"{sys.executable} -m pytest {target} -q -rxXs -p no:cacheprovider"
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"{NAMESPACE_SETUP} && exec {inner}"],
        # A pytest of its own: none of this run's (e.g. xdist's) PYTEST_ variables.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "TIDINGS_LOOPBACK_NETNS": "1",
        },
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=200,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and summary.startswith("2 passed"), done.stdout[-4000:]
