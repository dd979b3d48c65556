"""The playground's application server: a VAPID key and a sender living in the service.

With `--demo`, the service holds a VAPID key of its own (created on first start, PEM,
mode 0600, next to the token key file) so that a browser can subscribe with it and the
page can send test messages through `POST /demo/send`.

How the demo sends: it encrypts (RFC 8291) and signs (RFC 8292) exactly like an
application server, then hands the request to the service's own HTTP routes in
process, as `POST /push/<token>`, and returns the status and headers they answered
with. That is the code path every push takes after the connection layer (same
checks, same VAPID verification, same metrics), without a loopback connection that
would need the public URL to be reachable from the node itself (behind a proxy or
with TLS it often is not) and would hold a second connection per send. Only endpoints
of this service are accepted: the demo is no open relay.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.service.config import ServiceConfig
from tidings.service.core import PUSH_PATH
from tidings.service.http.messages import Request, Response
from tidings.service.keyfile import write_private_file
from tidings.webpush import (
    MAX_PLAINTEXT,
    VapidKey,
    b64url_decode,
    encrypt,
    load_p256_public_key,
    sign_vapid,
)
from tidings.webpush.headers import URGENCIES
from tidings.webpush.request import push_headers

DEMO_KEY_NAME = "tidings-demo-vapid.pem"
DEMO_SUBJECT = "mailto:playground@tidings.invalid"
MAX_DEMO_TTL = 24 * 3600
RECENT_SENDS = 50

Handler = Callable[[Request], Awaitable[Response]]


class DemoRequestError(ValueError):
    """A /demo/send document the demo cannot use (answered with 400)."""


def demo_key_path(config: ServiceConfig) -> Path:
    """Where the demo VAPID key lives: next to the token key file."""
    return config.secrets_path.parent / DEMO_KEY_NAME


def load_demo_key(path: Path) -> VapidKey:
    """The demo VAPID key, created (mode 0600) when the file does not exist yet."""
    if path.exists():
        return VapidKey.from_file(path)
    key = VapidKey.generate()
    write_private_file(path, key.to_pem())
    return key


@dataclass(frozen=True, slots=True)
class DemoMessage:
    """A checked /demo/send document."""

    endpoint: str
    token: str
    p256dh: bytes
    auth: bytes
    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    dry_run: bool


def _text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DemoRequestError(f"{name} must be a string")
    return value


def parse_demo_request(document: object, origin: str) -> DemoMessage:
    """Check a /demo/send document; raise DemoRequestError saying what to fix."""
    if not isinstance(document, dict):
        raise DemoRequestError("send a JSON object")
    subscription = document.get("subscription")
    if not isinstance(subscription, dict):
        raise DemoRequestError("subscription must be the PushSubscription's toJSON() object")
    endpoint = subscription.get("endpoint")
    keys = subscription.get("keys")
    if not isinstance(endpoint, str) or not isinstance(keys, dict):
        raise DemoRequestError("subscription needs an endpoint and keys (p256dh, auth)")
    prefix = origin + PUSH_PATH
    if not endpoint.startswith(prefix) or len(endpoint) == len(prefix):
        raise DemoRequestError(f"the demo sends only to subscriptions of this service ({prefix})")
    try:
        p256dh = b64url_decode(str(keys.get("p256dh", "")))
        auth = b64url_decode(str(keys.get("auth", "")))
        load_p256_public_key(p256dh)
    except Exception:
        raise DemoRequestError("keys.p256dh must be a P-256 public key, base64url") from None
    if len(auth) != 16:
        raise DemoRequestError("keys.auth must be 16 bytes, base64url")
    payload = (_text(document, "payload") or "").encode("utf-8")
    if len(payload) > MAX_PLAINTEXT:
        raise DemoRequestError(f"the payload is over {MAX_PLAINTEXT} bytes")
    ttl = document.get("ttl", 60)
    if isinstance(ttl, str) and ttl.strip().isdigit():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_DEMO_TTL:
        raise DemoRequestError(f"ttl must be a whole number of seconds from 0 to {MAX_DEMO_TTL}")
    urgency = _text(document, "urgency")
    if urgency is not None and urgency not in URGENCIES:
        raise DemoRequestError(f"urgency must be one of {', '.join(URGENCIES)}")
    topic = _text(document, "topic")  # checked by the service itself, as for any sender
    return DemoMessage(
        endpoint=endpoint,
        token=endpoint[len(prefix) :],
        p256dh=p256dh,
        auth=auth,
        payload=payload,
        ttl=ttl,
        urgency=urgency,
        topic=topic,
        dry_run=bool(document.get("dry_run")),
    )


HIDDEN_TOKEN = "<VAPID JWT, not shown: sign one with the demo key file>"


def build_push(message: DemoMessage, key: VapidKey) -> tuple[dict[str, str], bytes]:
    """The headers and body an application server would send for `message`."""
    vapid = sign_vapid(key, message.endpoint, DEMO_SUBJECT, expires_in=3600)
    body = encrypt(message.payload, message.p256dh, message.auth) if message.payload else b""
    headers = push_headers(
        ttl=message.ttl,
        has_body=bool(body),
        coding_headers={"Content-Encoding": "aes128gcm"},
        vapid=vapid,
        urgency=message.urgency,
        topic=message.topic,
    )
    return headers, body


def curl_command(endpoint: str, headers: dict[str, str], has_body: bool) -> str:
    """A curl command line replaying the push (the encrypted body read from body.bin)."""
    parts = ["curl", "-i", "-X", "POST"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    parts += ["--data-binary", "@body.bin"] if has_body else ["-H", "Content-Length: 0"]
    parts.append(endpoint)
    return shlex.join(parts)


class DemoSender:
    """Sends the playground's test messages with the demo key, and remembers results."""

    def __init__(self, config: ServiceConfig, handle: Handler) -> None:
        self.config = config
        self.key_path = demo_key_path(config)
        self.key = load_demo_key(self.key_path)
        self._handle = handle
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_SENDS)

    def key_document(self) -> dict[str, str]:
        """What the page needs to subscribe and to show ready-made sender commands."""
        return {
            "publicKey": self.key.public_key_b64,
            "keyFile": self.key_path.name,  # no file system path: it is the server's
            "subject": DEMO_SUBJECT,
            "origin": self.config.origin,
        }

    async def send(self, document: object, client: str = "-") -> dict[str, Any]:
        """Build the push for a /demo/send document and (unless dry_run) push it.

        The push carries the page's client address, so per-address limits apply to it.
        """
        message = parse_demo_request(document, self.config.origin)
        headers, body = build_push(message, self.key)
        # The signed token is a credential for every subscription made with the demo key
        # for an hour: the page is shown its shape, never the token itself.
        shown = {**headers, "Authorization": f"vapid t={HIDDEN_TOKEN}, k={self.key.public_key_b64}"}
        sent = {
            "method": "POST",
            "url": message.endpoint,
            "headers": {**shown, "Content-Length": str(len(body))},
            "body_base64": base64.b64encode(body).decode(),
            "curl": curl_command(message.endpoint, shown, bool(body)),
        }
        if message.dry_run:
            return {"request": sent}
        request = Request(
            "POST",
            PUSH_PATH + message.token,
            "",
            {name.lower(): value for name, value in headers.items()},
            body,
            client=client,
            http_version="1.1",
        )
        started = time.perf_counter()
        response = await self._handle(request)
        elapsed = time.perf_counter() - started
        answer: dict[str, Any] = {
            "status": response.status,
            "headers": dict(response.headers),
            "ms": round(elapsed * 1000, 2),
        }
        if response.body:
            try:
                answer["body"] = json.loads(response.body)
            except ValueError:
                answer["body"] = response.body.decode("utf-8", "replace")
        self.recent.append(
            {
                "time": round(time.time(), 3),
                "status": response.status,
                "ttl": message.ttl,
                "payload_bytes": len(message.payload),
                "topic": message.topic,
                "urgency": message.urgency,
            }
        )
        return {"request": sent, "response": answer}
