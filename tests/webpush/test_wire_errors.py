"""The JSON error body and the push request's headers, written once in webpush/ for all."""

from __future__ import annotations

import json

import pytest

from tidings.sender import ServiceError as SenderServiceError
from tidings.sender.request import assemble
from tidings.service.errors import Errno as ServiceErrno
from tidings.service.errors import ServiceError
from tidings.service.web.demo import DemoMessage, build_push
from tidings.webpush import Subscription, VapidKey, b64url_decode, sign_vapid
from tidings.webpush.errors import Errno, ErrorBody, errno_of, error_body, parse_error_body


def test_the_service_writes_the_body_the_sender_reads() -> None:
    refused = ServiceError(400, Errno.BAD_TOPIC, "Topic: too long")
    assert refused.body() == error_body(400, Errno.BAD_TOPIC, "Topic: too long")
    assert json.loads(refused.body()) == {
        "code": 400,
        "errno": 113,
        "error": "Bad Request",
        "message": "Topic: too long",
    }
    assert parse_error_body(refused.body()) == ErrorBody(
        code=400, errno=113, error="Bad Request", message="Topic: too long"
    )
    assert errno_of(refused.body()) == Errno.BAD_TOPIC


def test_the_old_names_are_the_same_objects() -> None:
    assert ServiceErrno is Errno
    assert SenderServiceError is ErrorBody


def test_another_services_error_phrase_is_kept() -> None:
    body = error_body(401, 306, "no credential", error="unauthorized")
    assert json.loads(body)["error"] == "unauthorized"


@pytest.mark.parametrize("body", [b"", b"<html>", b"[1]", b"{", b'{"errno": "5"}'])
def test_no_errno_in_what_is_not_an_error_body(body: bytes) -> None:
    assert errno_of(body) is None


def test_the_playground_and_the_sender_send_the_same_headers() -> None:
    key = VapidKey.generate()
    receiver = VapidKey.generate()
    p256dh = receiver.public_key_b64
    auth = "AAAAAAAAAAAAAAAAAAAAAA"
    endpoint = "https://push.example/push/abc"
    message = DemoMessage(
        endpoint=endpoint,
        token="abc",
        p256dh=b64url_decode(p256dh),
        auth=b64url_decode(auth),
        payload=b"hello",
        ttl=60,
        urgency="high",
        topic="news",
        dry_run=True,
    )
    demo_headers, body = build_push(message, key)
    subscription = Subscription(endpoint, b64url_decode(p256dh), b64url_decode(auth))
    vapid = sign_vapid(key, endpoint, "mailto:a@example.com", expires_in=3600)
    sent = assemble(
        subscription,
        body,
        {"Content-Encoding": "aes128gcm"},
        ttl=60,
        urgency="high",
        topic="news",
        vapid=vapid,
    )
    assert list(demo_headers) == list(sent.headers)
    del demo_headers["Authorization"], sent.headers["Authorization"]
    assert demo_headers == sent.headers
