"""A runtime that leaves (goes back to sleep) tells the element: `DELETE /hyperty/inbox`.

Without it the element would count the runtime as connected while the poll of an exited
process stays open (up to its timeout) and for the grace after it, and would put the
next message on an inbox nobody reads instead of pushing it."""

from __future__ import annotations

import httpx

from hyperty.helpers import Stack


async def test_a_closed_runtime_is_disconnected_at_once(stack: Stack) -> None:
    callee, url = await stack.callee("leaving", listen=True)
    await callee.wait_listening()
    assert stack.element.status(url) == "live"
    await callee.close()
    stack.runtimes.remove(callee)
    # Not "live" for the rest of the orphaned poll (25 s) nor the grace after it.
    assert stack.element.status(url) == "disconnected"
    assert [e for e in stack.kinds("disconnected") if e["addresses"] == [url]]

    # So the next message is pushed (the runtime's user agent wakes it), not queued.
    _, alice = await stack.caller()
    answer = await alice.invite(alice.invitation(url))
    assert answer is not None and answer.code == 100
    assert (answer.value or {}).get("via") == "push", answer


async def test_only_the_runtime_disconnects_its_addresses(stack: Stack) -> None:
    bob, bob_url = await stack.callee("bob", listen=True)
    await bob.wait_listening()
    mallory = await stack.runtime("mallory")
    await mallory.create_hyperty("connector")
    inbox = stack.element_url + "/inbox"
    async with httpx.AsyncClient(timeout=5) as client:
        anonymous = await client.delete(inbox, params={"address": bob_url})
        assert anonymous.status_code == 401 and anonymous.json()["errno"] == 306
        forged = await client.delete(
            inbox,
            params={"address": bob_url},
            headers={"authorization": f"Bearer {mallory.credential}"},
        )
        assert forged.status_code == 403 and forged.json()["errno"] == 307
        empty = await client.delete(
            inbox, headers={"authorization": f"Bearer {mallory.credential}"}
        )
        assert empty.status_code == 400
    assert stack.element.status(bob_url) == "live"  # untouched


async def test_what_the_mailboxes_keep_per_address_is_bounded_by_what_is_live() -> None:
    """Polls of ever new addresses, then disconnects: the tables shrink back (a client
    could otherwise grow them one address at a time)."""
    from tidings.hyperty.mailboxes import LAST_SEEN_PRUNE_MIN, Mailboxes

    now = [0.0]
    boxes = Mailboxes(grace=3.0, clock=lambda: now[0])
    for n in range(3 * LAST_SEEN_PRUNE_MIN):
        await boxes.take([f"hyperty://example.com/{n}"], timeout=0)
        now[0] += 0.01  # each poll time is older than grace within a few hundred polls
    assert len(boxes._last_seen) <= 2 * LAST_SEEN_PRUNE_MIN
    assert boxes.connected(f"hyperty://example.com/{3 * LAST_SEEN_PRUNE_MIN - 1}")
    assert not boxes.connected("hyperty://example.com/0")
    boxes.disconnect(f"hyperty://example.com/{n}" for n in range(1000))
    assert len(boxes._sessions) == 0 and len(boxes._polls) == 0
