"""A real Firefox as the callee's runtime: the push element's page and service worker.

Firefox opens the element's /hyperty/ page (its origin is the element's, so the service
worker is the element's too); the page subscribes with the element's key and registers
a runtime. The page and worker report to the harness's page server (`?report=`).
"""

from __future__ import annotations

import json

import pytest

from hyperty.helpers import Stack
from support.firefox import FirefoxFactory, PageServer
from tidings.hyperty import Message, object_url

pytestmark = pytest.mark.firefox


async def test_firefox_shows_the_incoming_call_and_a_missed_call_on_cancel(
    stack: Stack, firefox_client: FirefoxFactory
) -> None:
    reports = PageServer()
    reports.start()
    try:
        start = f"{stack.server.url}/hyperty/?report={reports.url}"
        firefox = firefox_client(stack.service.ws_url, page_server=reports, start_url=start)
        await firefox.start()
        registered = await firefox.wait_report("subscription", 60, what="page registration")
        hyperty = registered["hyperty"]
        record = stack.element.store.runtime_for(hyperty)
        assert record is not None and record.runtime == registered["runtime"]
        assert record.subscription["endpoint"] == registered["subscription"]["endpoint"]

        _, alice = await stack.caller()
        invitation = alice.invitation(hyperty)
        answer = await alice.invite(invitation)
        assert answer is not None and answer.code == 100, answer

        shown = await firefox.next_push_report(30)
        assert Message.from_json(shown["text"]) == invitation  # the reTHINK message itself
        assert shown["shown"] == {
            "title": "Incoming call from Alice",
            "body": "alice@example.com",
            "tag": object_url(invitation.from_),
        }
        assert shown["shown"] in [{k: n[k] for k in ("title", "body", "tag")}
                                  for n in shown["notifications"]]  # fmt: skip

        cancel = await alice.cancel(invitation)
        assert cancel is not None and cancel.code == 100
        missed = await firefox.next_push_report(30)
        # The ringing notification is replaced (same tag) by a missed call.
        tag = object_url(invitation.from_)
        assert missed["type"] == "delete"
        assert missed["shown"] == {"title": "Missed call", "body": "Alice called", "tag": tag}
        assert missed["notifications"] == [missed["shown"]], json.dumps(missed)
    finally:
        reports.stop()
