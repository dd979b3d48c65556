"""What the RFC 8030 conformance tests share: a user agent's view of a subscription,
and subscribe, push and drain over an HTTP/2 connection."""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.http2 import H2Client, PushedResponse
from tidings.webpush import (
    decrypt,
    encrypt,
    public_key_bytes,
)
from tidings.webpush.links import link_target

REL_PUSH = "urn:ietf:params:push"


REL_SET = "urn:ietf:params:push:set"


REL_RECEIPT = "urn:ietf:params:push:receipt"


def path_of(url: str) -> str:
    return urlsplit(url).path


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def tampered(url: str) -> str:
    """The same capability URL with one character of its token changed."""
    head, token = url.rsplit("/", 1)
    middle = len(token) // 2
    swapped = "A" if token[middle] != "A" else "B"
    return f"{head}/{token[:middle]}{swapped}{token[middle + 1 :]}"


class UA:
    """A user agent's view of one subscription: its URLs and its keys."""

    def __init__(self, response_headers: dict[str, str]) -> None:
        self.subscription = response_headers["location"]
        links = response_headers["link"]
        push = link_target(links, REL_PUSH)
        subscription_set = link_target(links, REL_SET)
        assert push and subscription_set, links
        self.push, self.set = push, subscription_set
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def encrypt(self, text: str) -> bytes:
        return encrypt(text.encode(), public_key_bytes(self.key.public_key()), self.auth)

    def decrypt(self, pushed: PushedResponse) -> str:
        return decrypt(pushed.body, self.key, self.auth).decode()


async def subscribe(
    client: H2Client, *, vapid: str | None = None, set_url: str | None = None
) -> UA:
    headers: dict[str, str] = {}
    body = b""
    if vapid is not None:
        headers["content-type"] = "application/webpush-options+json"
        body = json.dumps({"vapid": vapid}).encode()
    if set_url is not None:
        headers["link"] = f'<{set_url}>; rel="{REL_SET}"'
    response = await client.request("POST", "/subscribe", headers, body)
    assert response.status == 201, response
    return UA(response.headers)


async def push(
    client: H2Client, ua: UA, text: str | None, **headers: str
) -> tuple[int, dict[str, str]]:
    """An application server's push (over the same kind of HTTP/2 connection)."""
    body = ua.encrypt(text) if text is not None else b""
    request = {"ttl": "60", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if body:
        request["content-encoding"] = "aes128gcm"
    response = await client.request("POST", path_of(ua.push), request, body)
    return response.status, response.headers


async def drain(client: H2Client, url: str, **headers: str) -> list[PushedResponse]:
    """GET with Prefer: wait=0: everything pending, then 204 (section 6.1)."""
    stream = await client.open_stream(
        "GET", path_of(url), {"prefer": "wait=0", **{k: v for k, v in headers.items()}}
    )
    response = await asyncio.wait_for(stream.response, 10)
    assert response.status == 204, response
    pushed: list[PushedResponse] = []
    while not stream.pushes.empty():
        pushed.append(stream.pushes.get_nowait())
    return pushed
