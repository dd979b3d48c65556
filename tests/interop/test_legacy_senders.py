"""Legacy sender forms still sent by real application servers (issue #19), received by a
real Firefox and by the Python user agent: pywebpush in `aesgcm` mode, a sender built on
py-vapid's draft-01 signer (`Vapid01`: `Authorization: WebPush <jwt>` with
`Crypto-Key: p256ecdsa=...;dh=...`), the draft-00 `Bearer` form, and a sender that pads
and quotes its aesgcm parameters (Firefox rejects padded salt and dh)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from py_vapid import Vapid01
from pywebpush import webpush

from interop.test_firefox_service import start_subscribed
from support.firefox import FirefoxFactory
from support.service import RunningService, pywebpush_key, running_service
from tidings.webpush import VapidKey, aesgcm_encrypt, sign_vapid
from useragent.helpers import Inbox, make_agent

SUBJECT = "mailto:ops@example.com"


def pywebpush_aesgcm(subscription: dict[str, Any], key: VapidKey, text: str) -> int:
    """pywebpush in aesgcm mode, signing with its default (RFC 8292 `vapid`) signer."""
    response = webpush(
        subscription,
        data=text,
        vapid_private_key=pywebpush_key(key),
        vapid_claims={"sub": SUBJECT},
        content_encoding="aesgcm",
        ttl=60,
    )
    return int(response.status_code)


def vapid01_aesgcm(subscription: dict[str, Any], key: VapidKey, text: str) -> int:
    """pywebpush driven by py-vapid's draft-01 signer: `WebPush <jwt>` and one Crypto-Key
    holding both `p256ecdsa=` and aesgcm's `dh=`."""
    signer = Vapid01.from_pem(key.to_pem())
    response = webpush(
        subscription,
        data=text,
        vapid_private_key=signer,
        vapid_claims={"sub": SUBJECT},
        content_encoding="aesgcm",
        ttl=60,
    )
    assert response.request.headers["authorization"].startswith("WebPush ")
    assert "p256ecdsa=" in response.request.headers["crypto-key"]
    return int(response.status_code)


def _padded(param: str) -> str:
    name, _, value = param.partition("=")
    return f'{name}="{value}{"=" * (-len(value) % 4)}"'


def padded_aesgcm(
    subscription: dict[str, Any], key: VapidKey, text: str, *, bearer: bool = False
) -> int:
    """A sender that writes standard base64 padding and quotes in its aesgcm parameters;
    signed with `vapid t=, k=`, or the draft-00 `Bearer <jwt>` (key in Crypto-Key)."""
    keys = subscription["keys"]
    message = aesgcm_encrypt(text.encode(), keys["p256dh"], keys["auth"])
    signed = sign_vapid(key, subscription["endpoint"], SUBJECT)
    salt, dh = message.headers["Encryption"], message.headers["Crypto-Key"]
    assert len(salt.partition("=")[2]) % 4 and len(dh.partition("=")[2]) % 4  # will be padded
    headers = {
        "ttl": "60",
        "content-encoding": "aesgcm",
        "encryption": _padded(salt),
        "crypto-key": _padded(dh),
        "authorization": signed.authorization,
    }
    if bearer:
        headers["crypto-key"] += f", p256ecdsa={key.public_key_b64}"
        headers["authorization"] = f"Bearer {signed.token}"
    response = httpx.post(subscription["endpoint"], content=message.body, headers=headers)
    return response.status_code


SENDERS = {
    # First: Firefox decodes salt and dh with padding rejected; before the service
    # normalised them this push was accepted (201) and dropped by Firefox ("Invalid dh
    # parameter" in its log).
    "padded-vapid": padded_aesgcm,
    "pywebpush-aesgcm": pywebpush_aesgcm,
    "py-vapid-draft-01": vapid01_aesgcm,
    "padded-bearer": lambda subscription, key, text: padded_aesgcm(
        subscription, key, text, bearer=True
    ),
}


@pytest.mark.firefox
@pytest.mark.timeout(240)
async def test_firefox_receives_from_legacy_aesgcm_senders(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    key = VapidKey.generate()
    async with running_service(tmp_path) as service:
        firefox, subscription = await start_subscribed(service, firefox_client, key)
        for name, send in SENDERS.items():
            text = f"from {name} ✓"
            assert await asyncio.to_thread(send, subscription, key, text) == 201, name
            assert await firefox.next_push(timeout=30) == text, name


async def test_the_python_user_agent_receives_from_legacy_aesgcm_senders(
    service: RunningService, tmp_path: Path
) -> None:
    key = VapidKey.generate()
    inbox = Inbox()
    async with make_agent(service.ws_url, tmp_path / "ua") as ua:
        registration = await ua.register("app", on_push=inbox)
        sub = await registration.push_manager.subscribe(application_server_key=key.public_key_b64)
        for index, (name, send) in enumerate(SENDERS.items()):
            text = f"from {name} ✓"
            assert await asyncio.to_thread(send, sub.to_json(), key, text) == 201, name
            events = await inbox.wait_for(index + 1)
            assert events[index].data is not None
            assert events[index].data.text() == text, name
