"""The blocking pywebpush-style API: tidings.sender.send and tidings.sender.webpush."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sender.helpers import Keys, ScriptedService
from tidings.sender import ResultKind, SendResult, WebPushException, send, webpush
from tidings.webpush import VapidKey, verify_vapid


async def test_send_returns_the_result(push_service: ScriptedService, vapid_key: VapidKey) -> None:
    keys = Keys.generate()
    result = await asyncio.to_thread(
        send,
        keys.subscription(push_service.endpoint("s")),
        "from a script",
        vapid_key.to_pem().decode(),
        {"sub": "mailto:ops@example.com"},
        ttl=30,
    )
    assert isinstance(result, SendResult) and result.kind is ResultKind.ACCEPTED
    seen = push_service.seen("s")[0]
    assert keys.decrypt(seen.body, seen.headers) == b"from a script"
    assert seen.headers["TTL"] == "30"
    verify_vapid(seen.headers["Authorization"], audience=push_service.url)


async def test_webpush_is_a_drop_in_for_pywebpush(
    push_service: ScriptedService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    pem = tmp_path / "vapid.pem"
    pem.write_bytes(vapid_key.to_pem())
    keys = Keys.generate()
    push_service.script("gone", (410, {}, b'{"errno": 106, "message": "expired"}'))

    def pywebpush_style() -> None:
        webpush(
            subscription_info=keys.subscription(push_service.endpoint("ok")),
            data="hi",
            vapid_private_key=str(pem),
            vapid_claims={"sub": "mailto:ops@example.com"},
            headers={"Urgency": "low"},
            ttl=10,
        )
        with pytest.raises(WebPushException) as caught:
            webpush(
                keys.subscription(push_service.endpoint("gone")),
                "hi",
                vapid_private_key=str(pem),
                vapid_claims={"sub": "mailto:ops@example.com"},
            )
        assert caught.value.response is not None
        assert caught.value.response.status_code == 410 == caught.value.status_code
        assert "expired" in str(caught.value)

    await asyncio.to_thread(pywebpush_style)
    seen = push_service.seen("ok")[0]
    assert seen.headers["Urgency"] == "low" and seen.headers["TTL"] == "10"
    assert keys.decrypt(seen.body, seen.headers) == b"hi"


def test_webpush_curl_writes_the_body_and_sends_nothing(
    tmp_path: Path, vapid_key: VapidKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    command = webpush(
        Keys.generate().subscription("https://push.example.net/x"),
        "hi",
        vapid_key,
        {"sub": "mailto:a@b.c"},
        curl=True,
    )
    assert isinstance(command, str) and command.startswith("curl ")
    assert "@encrypted.data" in command and (tmp_path / "encrypted.data").stat().st_size > 0


def test_bad_input_raises_before_sending(vapid_key: VapidKey) -> None:
    sub = Keys.generate().subscription("http://127.0.0.1:9/never")
    with pytest.raises(ValueError, match="sub"):
        send(sub, "x", vapid_key, {"aud": "http://127.0.0.1:9"})
    with pytest.raises(ValueError, match="vapid_claims"):
        send(sub, "x", vapid_key)
    from tidings.webpush import PayloadTooLarge

    with pytest.raises(PayloadTooLarge):
        send(sub, "x" * 4000, vapid_key, {"sub": "mailto:a@b.c"})
