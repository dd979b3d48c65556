"""Capability tokens (service/tokens.py): sealed and opened, never forged, altered or
mistaken for another kind; key rotation."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.service import RunningService
from tidings.service.tokens import (
    EndpointRef,
    MessageRef,
    TokenError,
    TokenKind,
    TokenSealer,
    vapid_key_hash,
)
from tidings.webpush import b64url_decode, b64url_encode

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

CHANNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UAID = "00112233445566778899aabbccddeeff"

# tokens ---------------------------------------------------------------------------------


@pytest.fixture
def sealer() -> TokenSealer:
    return TokenSealer({1: TokenSealer.new_key()}, 1)


def test_endpoint_tokens_round_trip(sealer: TokenSealer) -> None:
    plain = EndpointRef(UAID, CHANNEL, None)
    restricted = EndpointRef(UAID, CHANNEL, vapid_key_hash(b"\x04" + b"k" * 64))
    for ref in (plain, restricted):
        assert sealer.open_endpoint(sealer.seal_endpoint(ref)) == ref


def test_message_tokens_round_trip(sealer: TokenSealer) -> None:
    ref = MessageRef(UAID, CHANNEL, "ff" * 16)
    assert sealer.open_message(sealer.seal_message(ref)) == ref


def test_endpoint_tokens_are_stable_per_subscription_and_unlinkable_across(
    sealer: TokenSealer,
) -> None:
    ref = EndpointRef(UAID, CHANNEL, None)
    assert sealer.seal_endpoint(ref) == sealer.seal_endpoint(ref)  # one push resource URL
    other = EndpointRef(UAID, "0" * 8 + CHANNEL[8:], None)
    raw = b64url_decode(sealer.seal_endpoint(ref))
    other_raw = b64url_decode(sealer.seal_endpoint(other))
    # Two subscriptions of one user agent share nothing beyond the kind and key id.
    assert raw[:2] == other_raw[:2]
    assert raw[2:14] != other_raw[2:14] and raw[14:] != other_raw[14:]


def test_a_message_token_never_opens_as_an_endpoint(sealer: TokenSealer) -> None:
    message = sealer.seal_message(MessageRef(UAID, CHANNEL, "ff" * 16))
    endpoint = sealer.seal_endpoint(EndpointRef(UAID, CHANNEL, None))
    with pytest.raises(TokenError):
        sealer.open_endpoint(message)
    with pytest.raises(TokenError):
        sealer.open_message(endpoint)


def test_a_token_with_its_kind_byte_changed_does_not_open(sealer: TokenSealer) -> None:
    raw = bytearray(b64url_decode(sealer.seal_message(MessageRef(UAID, CHANNEL, "ff" * 16))))
    raw[0] = TokenKind.ENDPOINT
    with pytest.raises(TokenError):
        sealer.open_endpoint(b64url_encode(bytes(raw)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_change_to_a_token_is_refused(sealer: TokenSealer, data: st.DataObject) -> None:
    token = sealer.seal_endpoint(EndpointRef(UAID, CHANNEL, None))
    raw = bytearray(b64url_decode(token))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(TokenError):
        sealer.open_endpoint(b64url_encode(bytes(raw)))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=600))
def test_any_text_opens_or_raises_token_error(sealer: TokenSealer, text: str) -> None:
    for opener in (sealer.open_endpoint, sealer.open_message):
        with contextlib.suppress(TokenError):
            opener(text)


def test_tokens_of_another_key_do_not_open(sealer: TokenSealer) -> None:
    other = TokenSealer({1: TokenSealer.new_key()}, 1)
    with pytest.raises(TokenError):
        sealer.open_endpoint(other.seal_endpoint(EndpointRef(UAID, CHANNEL, None)))


def test_rotation_opens_tokens_of_every_held_key() -> None:
    old_key, new_key = TokenSealer.new_key(), TokenSealer.new_key()
    old = TokenSealer({1: old_key}, 1)
    rotated = TokenSealer({1: old_key, 2: new_key}, 2)
    ref = EndpointRef(UAID, CHANNEL, None)
    assert rotated.open_endpoint(old.seal_endpoint(ref)) == ref
    assert b64url_decode(rotated.seal_endpoint(ref))[1] == 2
    with pytest.raises(TokenError):
        old.open_endpoint(rotated.seal_endpoint(ref))


@pytest.mark.parametrize(
    ("keys", "current"),
    [({1: b"short"}, 1), ({0: b"k" * 32}, 0), ({256: b"k" * 32}, 256), ({1: b"k" * 32}, 2)],
)
def test_sealer_refuses_bad_keys(keys: dict[int, bytes], current: int) -> None:
    with pytest.raises(ValueError):
        TokenSealer(keys, current)


async def test_a_token_has_one_spelling(service: RunningService) -> None:
    """Base64url's unused trailing bits must not give a second URL for one resource."""
    agent = await service.agent()
    registration = await agent.register()
    prefix, token = registration.endpoint.rsplit("/", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    variants = [c for c in alphabet if c != token[-1] and alphabet.index(c) >> 2 == last >> 2]
    assert variants  # the token's last character carries unused bits
    twin = token[:-1] + variants[0]
    assert b64url_decode(twin) == b64url_decode(token)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{prefix}/{twin}", headers={"ttl": "0"})
        assert response.status_code == 404
        assert (await client.post(registration.endpoint, headers={"ttl": "0"})).status_code == 201
    await agent.close()
