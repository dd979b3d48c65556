"""Message tokens: a random nonce per message, never one derived from its id.

The Location of a push, the path pushed to the user agent and the receipt name one
resource (tests/rfc8030/test_delivery_receipts.py checks that over HTTP/2); this checks what
the token is made of.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from support.service import running_service
from tidings.service import tokens
from tidings.service.tokens import MessageRef, TokenKind, TokenSealer, new_message_id
from tidings.webpush import b64url_decode

UAID = "a" * 32
CHANNEL = "0f0e0d0c-0b0a-4908-8706-050403020100"


def nonce_of(token: str) -> bytes:
    return b64url_decode(token)[2:14]


def test_nonce_is_not_derived_from_the_payload() -> None:
    sealer = TokenSealer({1: TokenSealer.new_key()}, 1)
    for _ in range(50):
        ref = MessageRef(UAID, CHANNEL, new_message_id())
        token = sealer.seal_message(ref)
        payload = sealer.open(TokenKind.MESSAGE, token)
        message_id = payload[32:]
        assert nonce_of(token) != message_id[:12]
        assert (
            nonce_of(token) != hashlib.sha256(bytes((TokenKind.MESSAGE,)) + payload).digest()[:12]
        )
        assert sealer.open_message(token) == ref  # the nonce is part of what names it
        assert sealer.seal_message(ref) == token  # one message, one URL


def test_messages_of_one_subscription_get_unrelated_nonces() -> None:
    sealer = TokenSealer({1: TokenSealer.new_key()}, 1)
    nonces = {
        nonce_of(sealer.seal_message(MessageRef(UAID, CHANNEL, new_message_id())))
        for _ in range(1000)
    }
    assert len(nonces) == 1000


def test_message_ids_sort_in_accept_order_with_80_random_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stores' indexes keyed by message id append when ids follow the accept time.
    clock = [1_800_000_000_000_000_000]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    made = []
    for _ in range(200):
        made.append(new_message_id())
        clock[0] += 1_000_000  # one millisecond later
    assert made == sorted(made)
    same_time = {new_message_id()[12:32] for _ in range(1000)}
    assert len(same_time) == 1000  # the id's random part differs within one millisecond
    assert len(made[-1]) == 56 and int(made[-1][:12], 16) == 1_800_000_000_199  # ms


def test_older_message_ids_keep_their_tokens() -> None:
    sealer = TokenSealer({1: TokenSealer.new_key()}, 1)
    ref = MessageRef(UAID, CHANNEL, "ab" * 16)  # stored before nonces were drawn
    token = sealer.seal_message(ref)
    assert nonce_of(token) == bytes.fromhex(ref.message_id)[:12]
    assert sealer.open_message(token) == ref


async def test_a_pushed_message_token_has_a_random_nonce(tmp_path: Path) -> None:
    async with running_service(tmp_path) as running:
        agent = await running.agent()
        registration = await agent.register()
        assert running.service is not None
        sealer = running.service.sealer
        async with httpx.AsyncClient(timeout=10) as client:
            locations = []
            for _ in range(2):
                answer = await client.post(registration.endpoint, headers={"ttl": "60"})
                assert answer.status_code == 201
                locations.append(answer.headers["location"])
            for location in locations:
                token = location.rsplit("/", 1)[-1]
                message_id = sealer.open(TokenKind.MESSAGE, token)[32:]
                assert nonce_of(token) != message_id[:12]
            # The user agent is told the same message: its id carries the nonce.
            frame = await agent.expect("notification")
            ref = sealer.open_message(locations[0].rsplit("/", 1)[-1])
            assert frame["version"] == ref.message_id
            # The Location deletes the message (a cancellation), once.
            assert (await client.delete(locations[1])).status_code == 204
            assert (await client.delete(locations[1])).status_code == 404
        await agent.close()
