"""Retry policy, Retry-After parsing, error bodies, status kinds, VAPID cache, key forms."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from py_vapid import Vapid02

from tidings.sender import (
    ResultKind,
    RetryPolicy,
    VapidTokenCache,
    load_vapid_key,
    parse_error_body,
    parse_retry_after,
)
from tidings.sender.results import classify_status
from tidings.webpush import InvalidKeyError, VapidKey, b64url_encode


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    now = datetime(2030, 1, 1, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(date, now=now.timestamp()) == pytest.approx(30)
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now=now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") is None


def test_backoff_grows_with_jitter_and_stops() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0)
    rng = random.Random(1)
    delays = [policy.next_delay(n, None, rng=rng) for n in (1, 2, 3, 4)]
    bounds = [(0.5, 1.0), (1.0, 2.0), (1.5, 3.0), (1.5, 3.0)]
    for delay, (low, high) in zip(delays, bounds, strict=True):
        assert delay is not None and low <= delay <= high
    assert policy.next_delay(5, None) is None
    no_jitter = RetryPolicy(base_delay=0.5, jitter=False)
    assert [no_jitter.next_delay(n, None) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured_and_long_ones_end_retries() -> None:
    policy = RetryPolicy(max_retry_after=10)
    delay = policy.next_delay(1, 4.0)
    assert delay is not None and 4.0 <= delay <= 4.5
    assert policy.next_delay(1, 11.0) is None
    assert RetryPolicy.none().next_delay(1, None) is None
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_error_bodies() -> None:
    body = b'{"code": 413, "errno": 104, "error": "Payload Too Large", "message": "over 4096"}'
    error = parse_error_body(body)
    assert error is not None and (error.code, error.errno) == (413, 104)
    assert str(error) == "Payload Too Large: over 4096 (errno 104)"
    nested = parse_error_body(b'{"error": {"message": "Client not subscribed"}}')
    assert nested is not None and nested.message == "Client not subscribed"
    assert parse_error_body(b'{"reason": "expired"}').message == "expired"  # type: ignore[union-attr]
    assert parse_error_body(b"<html>") is None
    assert parse_error_body(b"{not json") is None
    assert parse_error_body(b"[1]") is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (201, ResultKind.ACCEPTED),
        (202, ResultKind.ACCEPTED),
        (404, ResultKind.GONE),
        (410, ResultKind.GONE),
        (400, ResultKind.REJECTED),
        (401, ResultKind.REJECTED),
        (403, ResultKind.REJECTED),
        (413, ResultKind.REJECTED),
        (429, ResultKind.RETRY_LATER),
        (500, ResultKind.RETRY_LATER),
        (503, ResultKind.RETRY_LATER),
    ],
)
def test_status_kinds(status: int, kind: ResultKind) -> None:
    assert classify_status(status) is kind


def test_vapid_cache_signs_once_per_origin_and_renews_before_expiry() -> None:
    now = [1_000_000.0]
    cache = VapidTokenCache(
        VapidKey.generate(), "mailto:a@example.com", expires_in=3600, clock=lambda: now[0]
    )
    first = cache.for_endpoint("https://a.example/x/1")
    assert cache.for_endpoint("https://a.example/x/2") is first
    other = cache.for_endpoint("https://b.example:8443/y")
    assert other.audience == "https://b.example:8443"
    assert cache.signatures == 2
    now[0] += 3600 - cache.renew_before - 1
    assert cache.for_endpoint("https://a.example/x/3") is first
    now[0] += 2
    renewed = cache.for_endpoint("https://a.example/x/4")
    assert renewed is not first and renewed.expires_at > first.expires_at
    with pytest.raises(ValueError, match="mailto"):
        VapidTokenCache(VapidKey.generate(), "ops@example.com")


def test_vapid_key_forms_pywebpush_accepts(tmp_path: Path) -> None:
    key = VapidKey.generate()
    pem_path = tmp_path / "vapid.pem"
    pem_path.write_bytes(key.to_pem())
    forms = [
        key,
        key.private_key,
        str(pem_path),
        pem_path,
        key.to_pem(),
        key.to_pem().decode(),
        b64url_encode(key.private_bytes()),
    ]
    py_vapid = Vapid02.from_pem(key.to_pem())
    forms.append(py_vapid)
    from cryptography.hazmat.primitives import serialization

    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    forms.append(b64url_encode(der))
    for form in forms:
        assert load_vapid_key(form).public_key_b64 == key.public_key_b64, form
    with pytest.raises(InvalidKeyError):
        load_vapid_key("not a key at all")
    with pytest.raises(InvalidKeyError):
        load_vapid_key(str(tmp_path / "missing.pem") + "x" * 0 + "!")
