"""Building push requests without I/O: headers, encryption, limits, curl replay."""

from __future__ import annotations

import json
import shlex

import pytest

from sender.helpers import Keys
from tidings.sender import PushRequest, build_request
from tidings.sender.request import to_subscription
from tidings.webpush import (
    InvalidSubscription,
    PayloadTooLarge,
    Subscription,
    VapidKey,
    sign_vapid,
    verify_vapid,
)

ENDPOINT = "https://push.example.net/wpush/v2/abc"


def test_aes128gcm_request_headers_and_body_decrypt_with_http_ece(vapid_key: VapidKey) -> None:
    keys = Keys.generate()
    vapid = sign_vapid(vapid_key, ENDPOINT, "mailto:ops@example.com")
    request = build_request(
        keys.subscription(ENDPOINT), "héllo", ttl=60, urgency="high", topic="news", vapid=vapid
    )
    assert request.method == "POST" and request.url == ENDPOINT
    assert request.headers["TTL"] == "60"
    assert request.headers["Content-Encoding"] == "aes128gcm"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["Urgency"] == "high"
    assert request.headers["Topic"] == "news"
    assert request.headers["Authorization"].startswith("vapid t=")
    verified = verify_vapid(request.headers["Authorization"], audience="https://push.example.net")
    assert verified.public_key_b64 == vapid_key.public_key_b64
    assert keys.decrypt(request.body, request.headers) == "héllo".encode()


def test_aesgcm_uses_the_legacy_vapid_form(vapid_key: VapidKey) -> None:
    keys = Keys.generate()
    vapid = sign_vapid(vapid_key, ENDPOINT, "mailto:ops@example.com")
    request = build_request(
        keys.subscription(ENDPOINT), b"old", ttl=0, content_encoding="aesgcm", vapid=vapid
    )
    assert request.headers["Content-Encoding"] == "aesgcm"
    assert request.headers["Authorization"] == f"WebPush {vapid.token}"
    assert request.headers["Crypto-Key"].startswith("dh=")
    assert request.headers["Crypto-Key"].endswith(f";p256ecdsa={vapid_key.public_key_b64}")
    assert request.headers["Encryption"].startswith("salt=")
    assert keys.decrypt(request.body, request.headers) == b"old"
    verify_vapid(
        request.headers["Authorization"],
        audience=ENDPOINT,
        crypto_key=request.headers["Crypto-Key"],
    )


def test_no_payload_sends_no_body_and_no_coding() -> None:
    request = build_request(Keys.generate().subscription(ENDPOINT), None, ttl=5)
    assert request.body == b""
    assert "Content-Encoding" not in request.headers
    assert "Authorization" not in request.headers


def test_largest_payload_fits_in_4096_bytes_and_one_more_is_refused() -> None:
    sub = Keys.generate().subscription(ENDPOINT)
    assert len(build_request(sub, b"x" * 3993, ttl=0).body) == 4096
    with pytest.raises(PayloadTooLarge, match="3994 bytes; at most 3993"):
        build_request(sub, b"x" * 3994, ttl=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": -1}, "ttl must be"),
        ({"ttl": True}, "ttl must be"),
        ({"ttl": "60"}, "ttl must be"),
        ({"ttl": 1, "urgency": "urgent"}, "urgency must be one of"),
        ({"ttl": 1, "topic": "has space"}, "topic must be"),
        ({"ttl": 1, "topic": "x" * 33}, "topic must be"),
        ({"ttl": 1, "content_encoding": "gzip"}, "content_encoding"),
    ],
)
def test_bad_options_are_refused_with_what_to_fix(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_request(Keys.generate().subscription(ENDPOINT), b"x", **options)


def test_data_must_be_bytes_or_text() -> None:
    with pytest.raises(TypeError, match=r"json\.dumps"):
        build_request(Keys.generate().subscription(ENDPOINT), {"a": 1}, ttl=0)  # type: ignore[arg-type]


def test_subscription_forms() -> None:
    keys = Keys.generate()
    as_dict = keys.subscription(ENDPOINT)
    model = to_subscription(as_dict)
    assert isinstance(model, Subscription) and model.p256dh == keys.p256dh
    assert to_subscription(json.dumps(as_dict)) == model
    assert to_subscription(model) is model
    with pytest.raises(InvalidSubscription, match="keys"):
        to_subscription({"endpoint": ENDPOINT})
    with pytest.raises(InvalidSubscription, match="p256dh"):
        to_subscription({"endpoint": ENDPOINT, "keys": {"p256dh": "AAAA", "auth": "AAAA"}})
    with pytest.raises(InvalidSubscription):
        to_subscription(42)  # type: ignore[arg-type]


def test_curl_command_replays_headers_and_body() -> None:
    request = PushRequest(url=ENDPOINT, headers={"TTL": "1", "Topic": "a b'c"}, body=b"xyz")
    argv = shlex.split(request.to_curl("/tmp/body.bin"))
    assert argv[0] == "curl" and argv[-1] == ENDPOINT
    assert "TTL: 1" in argv and "Topic: a b'c" in argv
    assert "@/tmp/body.bin" in argv
    assert request.header_lines()[-1] == "Content-Length: 3"
