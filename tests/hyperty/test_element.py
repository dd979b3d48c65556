"""The push element with a real push service, real user agents and runtimes, over HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from hyperty.helpers import DOMAIN, Stack, events_of, wait_for
from tidings.hyperty import HypertyRuntime, Message, object_url, topic_for
from tidings.hyperty.connector import identity_for
from tidings.hyperty.runtime import SCOPE, HypertyRuntimeError
from tidings.useragent import UserAgent
from tidings.webpush import MAX_PLAINTEXT


async def test_registration_and_unregistration(stack: Stack) -> None:
    runtime, hyperty = await stack.callee()
    record = stack.element.store.runtime_for(hyperty)
    assert record is not None and record.runtime == runtime.url
    assert record.subscription == runtime.subscription
    assert stack.element.status(hyperty) == "disconnected"
    # The first registration (before the address allocation) got the credential.
    assert stack.kinds("registered") == [
        {"runtime": runtime.url, "hyperties": []},
        {"runtime": runtime.url, "hyperties": [hyperty]},
    ]

    answer = await runtime.unregister()
    assert (answer.code, answer.from_, answer.to) == (
        200,
        stack.element.url,
        runtime.url + "/registry",
    )
    assert stack.element.store.runtime_for(hyperty) is None
    assert stack.element.status(hyperty) is None
    again = await runtime.unregister()
    assert again.code == 404 and "is not registered" in (again.description or "")


async def test_bad_registrations_get_a_rethink_400(stack: Stack) -> None:
    sender = "hyperty-runtime://example.com/r1/registry"
    base = {"id": 5, "type": "create", "from": sender, "to": stack.element.url}
    response = await stack.post({**base, "body": {"value": {"subscription": 1, "hyperties": []}}})
    assert response.status_code == 200
    answer = Message.from_dict(response.json())
    assert (answer.id, answer.type, answer.to, answer.code) == (5, "response", sender, 400)
    assert answer.description is not None
    assert answer.description.startswith("body.value.subscription: must be the PushSubscription")

    response = await stack.post({**base, "type": "update"})
    assert Message.from_dict(response.json()).code == 400

    response = await stack.post({**base, "to": "user://example.com/bob"})
    answer = Message.from_dict(response.json())
    assert answer.code == 400 and "delivers to hyperty:// addresses" in (answer.description or "")


async def test_http_errors(stack: Stack) -> None:
    response = await stack.post({"id": 1, "type": "invite"})
    assert response.status_code == 400
    assert response.json()["errno"] == 302
    assert response.json()["message"].startswith("from: is required")
    async with httpx.AsyncClient(timeout=5) as client:
        bad = await client.post(stack.element_url + "/messages", content=b"{not json")
        assert bad.status_code == 400 and "is not JSON" in bad.json()["message"]
        big = await client.post(stack.element_url + "/messages", content=b" " * 70_000)
        assert big.status_code == 413
        assert (await client.get(stack.element_url + "/messages")).status_code == 405
        assert (await client.get(stack.element_url + "/nothing")).status_code == 404
        assert (await client.get(stack.element_url + "/inbox")).status_code == 400
        config = (await client.get(stack.element_url + "/config")).json()
        assert config["applicationServerKey"] == stack.key.public_key_b64
        assert config["element"] == "domain://push.example.com" and config["ttl"] == 60
    runtime = await stack.runtime("answering")
    callee = await runtime.create_hyperty("connector")
    orphan = {
        "id": 77,
        "type": "response",
        "from": callee,
        "to": "connection://example.com/nobody/subscription",
        "body": {"code": 200},
    }
    response = await stack.post(orphan, runtime.credential)
    assert response.status_code == 404 and response.json()["errno"] == 304


async def test_a_call_is_pushed_and_accepted(stack: Stack) -> None:
    callee, bob = await stack.callee()
    _, alice = await stack.caller()
    seen: list[Message] = []
    invitation = alice.invitation(bob)
    answer = await alice.call(bob, invitation=invitation, timeout=10, on_answer=seen.append)

    assert answer.code == 200 and answer.value == {"status": "accepted"}
    assert (answer.id, answer.from_, answer.to) == (invitation.id, bob, invitation.from_)
    assert [m.code for m in seen] == [100, 200]
    assert seen[0].value == {"via": "push", "topic": topic_for(invitation.from_), "urgency": "high"}

    [pushed] = stack.kinds("pushed")
    assert pushed["kind"] == "accepted" and pushed["status"] == 201
    assert (pushed["urgency"], pushed["ttl"], pushed["topic"]) == (
        "high", 60, topic_for(object_url(invitation.from_)),
    )  # fmt: skip
    assert pushed["bytes"] == len(invitation.encoded()) and not pushed["slimmed"]
    [routed] = stack.kinds("routed")
    assert routed == {"to": alice.url, "id": invitation.id, "code": 200, "via": "inbox"}

    [ring] = events_of(callee, "ring")
    assert ring["caller"] == "Alice" and ring["source"] == alice.url
    assert ring["connection"] == object_url(invitation.from_)
    assert events_of(callee, "woken")[0]["id"] == invitation.id
    assert stack.element.pending_for(bob) == []  # answered: nothing pending


async def test_a_decline_with_486_reaches_the_caller(stack: Stack) -> None:
    callee, bob = await stack.callee(options={"answer": "decline"})
    _, alice = await stack.caller()
    answer = await alice.call(bob, timeout=10)
    assert (answer.code, answer.description) == (486, "Busy Here")
    assert answer.from_ == bob
    assert events_of(callee, "declined")
    assert [r["code"] for r in stack.kinds("routed")] == [486]


async def test_cancel_replaces_the_queued_invitation(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    callee, bob = await stack.callee()
    await callee.close()  # the callee's device goes offline: pushes wait at the service
    stack.runtimes.remove(callee)
    _, alice = await stack.caller()

    invitation = alice.invitation(bob)
    first = await alice.invite(invitation)
    assert first is not None and first.code == 100
    assert len(stack.element.pending_for(bob)) == 1
    cancelled = await alice.cancel(invitation)
    assert cancelled is not None and cancelled.code == 100
    assert cancelled.value["replaced"] == 1
    assert stack.element.pending_for(bob) == []
    invite_push, cancel_push = stack.kinds("pushed")
    assert invite_push["type"] == "create" and cancel_push["type"] == "delete"
    assert invite_push["topic"] == cancel_push["topic"] == topic_for(invitation.from_)
    assert cancel_push["urgency"] == "high"

    # The device comes back: only the cancel arrives, the invitation was replaced.
    back = await stack.runtime("callee", service=stack.service.ws_url)
    assert back.url == callee.url
    await wait_for(lambda: events_of(back, "cancelled"))
    await asyncio.sleep(0.3)
    woken = events_of(back, "woken")
    assert [w["type"] for w in woken] == ["delete"]
    assert events_of(back, "ring") == []
    assert events_of(back, "cancelled")[0]["ringing"] is False


async def test_a_cancel_stops_a_ringing_callee(stack: Stack) -> None:
    callee, bob = await stack.callee(options={"ring_seconds": 10})
    _, alice = await stack.caller()
    invitation = alice.invitation(bob)
    await alice.invite(invitation)
    await wait_for(lambda: events_of(callee, "ring"))
    answer = await alice.cancel(invitation)
    assert answer is not None and answer.value["replaced"] == 1  # still pending: unanswered
    await wait_for(lambda: events_of(callee, "missed"))
    assert events_of(callee, "cancelled")[0]["ringing"] is True
    assert events_of(callee, "accepted") == []


async def test_a_gone_subscription_is_purged(stack: Stack) -> None:
    callee, bob = await stack.callee()
    runtime_url = callee.url
    await callee.close()
    stack.runtimes.remove(callee)
    async with UserAgent(stack.service.ws_url, callee.state_path, connect_timeout=5) as agent:
        await agent.wait_connected(5)  # unsubscribe tells the service only when connected
        registration = await agent.register(SCOPE)
        subscription = await registration.push_manager.get_subscription()
        assert subscription is not None
        assert await subscription.unsubscribe()
    _, alice = await stack.caller()

    answer = await alice.call(bob, timeout=5)
    assert answer.code == 410 and answer.from_ == stack.element.url
    assert "is gone" in (answer.description or "") and runtime_url in (answer.description or "")
    [purged] = stack.kinds("purged")
    assert purged["runtime"] == runtime_url and purged["status"] in (404, 410)
    assert stack.element.store.get_runtime(runtime_url) is None
    assert stack.element.pending_for(bob) == []
    again = await alice.call(bob, timeout=5)
    assert again.code == 404 and "not registered" in (again.description or "")


async def test_an_oversized_invitation_is_slimmed(stack: Stack) -> None:
    callee, bob = await stack.callee()
    _, alice = await stack.caller()
    invitation = alice.invitation(bob, assertion="x" * 3500)
    assert len(invitation.encoded()) > MAX_PLAINTEXT
    seen: list[Message] = []
    answer = await alice.call(bob, invitation=invitation, timeout=10, on_answer=seen.append)
    assert answer.code == 200
    assert seen[0].value["slimmed"] == "identity assertion dropped"
    [pushed] = stack.kinds("pushed")
    assert pushed["slimmed"] and pushed["bytes"] <= MAX_PLAINTEXT
    assert events_of(callee, "ring")[0]["caller"] == "Alice"  # the profile stays


async def test_a_message_too_large_is_refused(stack: Stack) -> None:
    _, bob = await stack.callee()
    _, alice = await stack.caller()
    invitation = alice.invitation(bob, assertion="x" * 100, extra={"sdp": "a" * 5000})
    answer = await alice.call(bob, invitation=invitation, timeout=5)
    assert answer.code == 413 and answer.from_ == stack.element.url
    assert "over the 3993-byte limit" in (answer.description or "")
    assert stack.kinds("pushed") == []
    assert stack.element.pending_for(bob) == []


async def test_a_connected_runtime_gets_messages_on_its_inbox(stack: Stack) -> None:
    callee, bob = await stack.callee(listen=True)
    await callee.wait_listening()
    assert stack.element.status(bob) == "live"
    _, alice = await stack.caller()
    seen: list[Message] = []
    answer = await alice.call(bob, timeout=10, on_answer=seen.append)
    assert answer.code == 200
    assert seen[0].description == f"delivered to {bob}"
    assert stack.kinds("pushed") == []


async def test_the_runtime_keeps_its_address_and_hyperties(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = HypertyRuntime(None, tmp_path / "r", domain=DOMAIN, element=stack.element_url)
    async with first:  # the element allocates the address
        hyperty = await first.create_hyperty("connector", options={"answer": "decline"})
    second = HypertyRuntime(None, tmp_path / "r")
    assert second.url == first.url and second.hyperties == first.hyperties
    assert second.running(hyperty) is None
    with pytest.raises(HypertyRuntimeError, match="holds the runtime"):
        HypertyRuntime("hyperty-runtime://example.com/other", tmp_path / "r")
    with pytest.raises(HypertyRuntimeError, match="give a runtime URL or a domain"):
        HypertyRuntime(None, tmp_path / "empty")
    with pytest.raises(HypertyRuntimeError, match="neither a known name nor module:attribute"):
        await second.create_hyperty("no-such-factory")

    # A message for the sleeping hyperty re-creates it at its old address.
    invitation = Message(
        3, "create", "connection://example.com/c1/subscription", hyperty,
        {"source": "hyperty://example.com/a", "identity": identity_for("Carol", DOMAIN)},
    )  # fmt: skip
    async with second:
        await second.wake(invitation)  # its 486 goes to the element (nobody waits for it)
    assert events_of(second, "declined")
    assert second.running(hyperty) is not None
    assert events_of(second, "hyperty-created")[-1]["hyperty"] == hyperty
    assert events_of(second, "ring")[0]["caller"] == "Carol"


async def test_the_wake_command_handles_a_subscription_change(stack: Stack) -> None:
    from tidings.hyperty.wake import wake

    runtime = await stack.runtime("sleepy", service=stack.service.ws_url)
    hyperty = await runtime.create_hyperty("connector")
    await runtime.subscribe(command="true")  # served by `tidings agent` from now on
    old = runtime.subscription
    assert old is not None
    new = {**old, "endpoint": old["endpoint"] + "-renewed"}
    change = json.dumps({"oldSubscription": old, "newSubscription": new}).encode()
    assert await wake(str(runtime.state_path), change, "pushsubscriptionchange") == 0
    record = stack.element.store.runtime_for(hyperty)
    assert record is not None and record.subscription["endpoint"] == new["endpoint"]
    assert HypertyRuntime(None, runtime.state_path).subscription == new

    assert await wake(str(runtime.state_path), b"not a message") == 1
