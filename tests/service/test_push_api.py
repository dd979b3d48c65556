"""The application server side over real HTTP: push headers, sizes, VAPID, tokens, errors.

Every refused request must carry the JSON error body `{code, errno, error, message}`
with content type application/json; `assert_error` checks that on every error path.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.errors import Errno
from tidings.webpush import VapidKey, aesgcm_encrypt, b64url_encode, encrypt, sign_vapid

SUBJECT = "mailto:ops@example.com"


def encrypted(registration: Registration, text: str = "hello", pad: int = 0) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"], pad=pad)


async def post(
    url: str, content: Any = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=content, headers=headers or {})


async def push(
    registration: Registration,
    text: str = "hello",
    *,
    ttl: str | None = "60",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> httpx.Response:
    sent = {"content-encoding": "aes128gcm", **(headers or {})}
    if ttl is not None:
        sent["ttl"] = ttl
    content = encrypted(registration, text) if body is None else body
    return await post(registration.endpoint, content, sent)


def assert_error(response: httpx.Response, status: int, errno: Errno | int) -> dict[str, Any]:
    """The response is the JSON error document for `status` and `errno`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "errno", "error", "message"}, body
    assert body["code"] == status
    assert body["errno"] == int(errno)
    assert body["error"] == HTTPStatus(status).phrase
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.fixture
async def agent(service: RunningService) -> AsyncIterator[TestAgent]:
    agent = await service.agent()
    yield agent
    await agent.close()


@pytest.fixture
async def registration(agent: TestAgent) -> Registration:
    return await agent.register()


# An accepted push -----------------------------------------------------------------------


async def test_push_is_201_with_location_and_ttl(
    service: RunningService, registration: Registration, agent: TestAgent
) -> None:
    response = await push(registration, "accepted", ttl="300")
    assert response.status_code == 201
    assert response.headers["ttl"] == "300"
    assert response.headers["location"].startswith(service.url + "/m/")
    assert response.content == b""
    assert (await agent.next_notification()).plaintext == b"accepted"


async def test_body_of_4096_bytes_is_accepted(registration: Registration, agent: TestAgent) -> None:
    plaintext = "x" * 100
    body = encrypted(registration, plaintext, pad=4096 - 86 - 17 - len(plaintext))
    assert len(body) == 4096
    response = await push(registration, body=body)
    assert response.status_code == 201, response.text
    assert (await agent.next_notification()).plaintext == plaintext.encode()


# TTL ------------------------------------------------------------------------------------


async def test_ttl_is_required(registration: Registration) -> None:
    assert_error(await push(registration, ttl=None), 400, Errno.BAD_TTL)


@pytest.mark.parametrize("ttl", ["-1", "abc", "1.5", "", "1e3", "0x10", "60, 60", "+5"])
async def test_bad_ttl_is_400(registration: Registration, ttl: str) -> None:
    assert_error(await push(registration, ttl=ttl), 400, Errno.BAD_TTL)


@pytest.mark.parametrize("ttl", ["99999999999999999999999", str(2**31), str(31 * 24 * 3600)])
async def test_huge_ttl_is_capped_at_max_ttl(registration: Registration, ttl: str) -> None:
    response = await push(registration, ttl=ttl)
    assert response.status_code == 201, response.text
    assert response.headers["ttl"] == str(30 * 24 * 3600)


async def test_ttl_cap_follows_configuration(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_ttl=100) as running:
        agent = await running.agent()
        registration = await agent.register()
        response = await push(registration, ttl="1000")
        assert response.status_code == 201
        assert response.headers["ttl"] == "100"
        await agent.close()


# Urgency and Topic ----------------------------------------------------------------------


@pytest.mark.parametrize("urgency", ["very-low", "low", "normal", "high", "HIGH"])
async def test_valid_urgency_is_accepted(registration: Registration, urgency: str) -> None:
    assert (await push(registration, headers={"urgency": urgency})).status_code == 201


@pytest.mark.parametrize("urgency", ["urgent", "low, high", "0", "very low"])
async def test_bad_urgency_is_400(registration: Registration, urgency: str) -> None:
    assert_error(await push(registration, headers={"urgency": urgency}), 400, Errno.BAD_URGENCY)


async def test_repeated_urgency_header_is_400(registration: Registration) -> None:
    headers = [
        ("ttl", "60"),
        ("content-encoding", "aes128gcm"),
        ("urgency", "low"),
        ("urgency", "high"),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            registration.endpoint, content=encrypted(registration), headers=headers
        )
    assert_error(response, 400, Errno.BAD_URGENCY)


@pytest.mark.parametrize("topic", ["a" * 32, "Weather_Report-2", "x"])
async def test_valid_topic_is_accepted(registration: Registration, topic: str) -> None:
    assert (await push(registration, headers={"topic": topic})).status_code == 201


@pytest.mark.parametrize("topic", ["a" * 33, "has space", "dot.ted", "slash/", "pad=", "a,b"])
async def test_bad_topic_is_400(registration: Registration, topic: str) -> None:
    assert_error(await push(registration, headers={"topic": topic}), 400, Errno.BAD_TOPIC)


# Content encoding and body --------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "aesgcm128", "identity"])
async def test_unknown_content_encoding_is_400(registration: Registration, encoding: str) -> None:
    response = await push(registration, headers={"content-encoding": encoding})
    assert_error(response, 400, Errno.BAD_ENCODING)


async def test_body_without_content_encoding_is_400(registration: Registration) -> None:
    response = await post(registration.endpoint, encrypted(registration), {"ttl": "60"})
    assert_error(response, 400, Errno.BAD_ENCODING)


@pytest.mark.parametrize("missing", ["encryption", "crypto-key"])
async def test_aesgcm_without_its_headers_is_400(registration: Registration, missing: str) -> None:
    keys = registration.subscription_info()["keys"]
    message = aesgcm_encrypt(b"legacy", keys["p256dh"], keys["auth"])
    headers = {
        "ttl": "60",
        "content-encoding": "aesgcm",
        "encryption": message.headers["Encryption"],
        "crypto-key": message.headers["Crypto-Key"],
    }
    del headers[missing]
    assert_error(await post(registration.endpoint, message.body, headers), 400, Errno.BAD_ENCODING)


async def test_aesgcm_crypto_key_with_only_the_vapid_key_is_400(
    registration: Registration,
) -> None:
    keys = registration.subscription_info()["keys"]
    message = aesgcm_encrypt(b"legacy", keys["p256dh"], keys["auth"])
    headers = {
        "ttl": "60",
        "content-encoding": "aesgcm",
        "encryption": message.headers["Encryption"],
        "crypto-key": "p256ecdsa=" + VapidKey.generate().public_key_b64,
    }
    assert_error(await post(registration.endpoint, message.body, headers), 400, Errno.BAD_ENCODING)


@pytest.mark.parametrize("size", [1, 20, 40])
async def test_truncated_aes128gcm_body_is_400(registration: Registration, size: int) -> None:
    assert_error(await push(registration, body=encrypted(registration)[:size]), 400, Errno.BAD_BODY)


async def test_body_over_max_body_is_413(
    service: RunningService, registration: Registration
) -> None:
    too_large = b"\x00" * (service.config.max_body + 1)
    assert_error(await push(registration, body=too_large), 413, Errno.BODY_TOO_LARGE)


async def test_declared_length_over_max_body_is_413(
    service: RunningService, registration: Registration
) -> None:
    # Headers only: the service must answer without waiting for a body that never comes.
    path = "/push/" + registration.endpoint.rsplit("/", 1)[1]
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nttl: 60\r\n"
        "content-encoding: aes128gcm\r\ncontent-length: 100000\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", service.config.port)
    try:
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    finally:
        writer.close()
    assert lines[0].startswith("HTTP/1.1 413 ")
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errno"] == Errno.BODY_TOO_LARGE


async def test_chunked_body_over_max_body_is_413(registration: Registration) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\x00" * 1000

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            registration.endpoint,
            content=chunks(),
            headers={"ttl": "60", "content-encoding": "aes128gcm"},
        )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, Errno.BODY_TOO_LARGE)


async def test_chunked_body_within_limit_is_accepted(
    registration: Registration, agent: TestAgent
) -> None:
    body = encrypted(registration, "in pieces")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            yield body[start : start + 16]

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            registration.endpoint,
            content=chunks(),
            headers={"ttl": "60", "content-encoding": "aes128gcm"},
        )
    assert response.status_code == 201, response.text
    assert (await agent.next_notification()).plaintext == b"in pieces"


# VAPID ----------------------------------------------------------------------------------


@pytest.fixture
def vapid_key() -> VapidKey:
    return VapidKey.generate()


@pytest.fixture
async def restricted(agent: TestAgent, vapid_key: VapidKey) -> Registration:
    return await agent.register(vapid_key.public_key_b64)


def authorization(key: VapidKey, endpoint: str, **options: Any) -> str:
    return sign_vapid(key, endpoint, SUBJECT, **options).authorization


def forged_token(key: VapidKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWT with any header and claims, signed (ES256) or not (alg none)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def segment(value: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(value).encode())

    signing_input = f"{segment(header)}.{segment(claims)}"
    if header.get("alg") != "ES256":
        return signing_input + "."
    r, s = decode_dss_signature(
        key.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    )
    return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


async def test_restricted_without_authorization_is_401(restricted: Registration) -> None:
    response = await push(restricted)
    assert_error(response, 401, Errno.VAPID_MISSING)
    assert response.headers["www-authenticate"].lower().startswith("vapid")


async def test_restricted_with_another_scheme_is_401(restricted: Registration) -> None:
    response = await push(restricted, headers={"authorization": "Bearer abc"})
    assert_error(response, 401, Errno.VAPID_MISSING)


async def test_restricted_with_the_right_key_is_201(
    restricted: Registration, vapid_key: VapidKey, agent: TestAgent
) -> None:
    auth = authorization(vapid_key, restricted.endpoint)
    response = await push(restricted, "signed", headers={"authorization": auth})
    assert response.status_code == 201, response.text
    assert (await agent.next_notification()).plaintext == b"signed"


async def test_restricted_with_a_wrong_key_is_403(restricted: Registration) -> None:
    auth = authorization(VapidKey.generate(), restricted.endpoint)
    response = await push(restricted, headers={"authorization": auth})
    assert_error(response, 403, Errno.VAPID_KEY_MISMATCH)


async def test_vapid_check_comes_before_header_checks(restricted: Registration) -> None:
    assert_error(await push(restricted, ttl=None), 401, Errno.VAPID_MISSING)


def _bad_signature(key: VapidKey, endpoint: str) -> str:
    auth = authorization(key, endpoint)
    token = auth.split("t=", 1)[1].split(",", 1)[0]
    body, signature = token.rsplit(".", 1)
    flipped = ("B" if signature[10] == "A" else "A").join((signature[:10], signature[11:]))
    return auth.replace(token, f"{body}.{flipped}")


INVALID_TOKENS = {
    "bad-signature": lambda key, endpoint: _bad_signature(key, endpoint),
    "expired": lambda key, endpoint: authorization(
        key, endpoint, now=time.time() - 7200, expires_in=3600
    ),
    "exp-over-24h": lambda key, endpoint: authorization(
        key, endpoint, now=time.time() + 3 * 3600, expires_in=24 * 3600
    ),
    "wrong-aud": lambda key, endpoint: authorization(key, "https://push.example.com/x"),
    "aud-with-other-port": lambda key, endpoint: authorization(key, "http://127.0.0.1:1/x"),
    "alg-none": lambda key, endpoint: "vapid t={}, k={}".format(
        forged_token(
            key,
            {"typ": "JWT", "alg": "none"},
            {"aud": endpoint.split("/push/")[0], "exp": int(time.time()) + 600, "sub": SUBJECT},
        ),
        key.public_key_b64,
    ),
    "alg-hs256": lambda key, endpoint: "vapid t={}, k={}".format(
        forged_token(
            key,
            {"typ": "JWT", "alg": "HS256"},
            {"aud": endpoint.split("/push/")[0], "exp": int(time.time()) + 600},
        ),
        key.public_key_b64,
    ),
    "no-exp": lambda key, endpoint: "vapid t={}, k={}".format(
        forged_token(key, {"typ": "JWT", "alg": "ES256"}, {"aud": endpoint.split("/push/")[0]}),
        key.public_key_b64,
    ),
    "not-a-jwt": lambda key, endpoint: f"vapid t=garbage, k={key.public_key_b64}",
}
# Headers from which no token and key can be read: 401 on any subscription (issue #19).
UNREADABLE_AUTHORIZATIONS = {
    "no-k": lambda key, endpoint: authorization(key, endpoint).split(", k=")[0],
    "no-t": lambda key, endpoint: f"vapid k={key.public_key_b64}",
    "webpush-without-crypto-key": lambda key, endpoint: (
        sign_vapid(key, endpoint, SUBJECT).legacy_authorization
    ),
    "bearer-without-token": lambda key, endpoint: "Bearer",
    "basic-scheme": lambda key, endpoint: "Basic dXNlcjpwYXNz",
    "gcm-key": lambda key, endpoint: "key=AIzaSyExample",
    "unknown-scheme-with-jwt": lambda key, endpoint: (
        "Token " + sign_vapid(key, endpoint, SUBJECT).token
    ),
}


@pytest.mark.parametrize("make", INVALID_TOKENS.values(), ids=INVALID_TOKENS.keys())
async def test_restricted_with_an_invalid_token_is_403(
    restricted: Registration, vapid_key: VapidKey, make: Any
) -> None:
    response = await push(
        restricted, headers={"authorization": make(vapid_key, restricted.endpoint)}
    )
    assert_error(response, 403, Errno.VAPID_INVALID)


@pytest.mark.parametrize("restricted_to_key", [True, False], ids=["restricted", "unrestricted"])
@pytest.mark.parametrize(
    "make", UNREADABLE_AUTHORIZATIONS.values(), ids=UNREADABLE_AUTHORIZATIONS.keys()
)
async def test_an_unreadable_authorization_is_401_on_any_subscription(
    agent: TestAgent, vapid_key: VapidKey, make: Any, restricted_to_key: bool
) -> None:
    """Once ignored on an unrestricted subscription (and the push accepted), so a sender
    never learnt that its VAPID set-up was broken."""
    registration = await agent.register(vapid_key.public_key_b64 if restricted_to_key else None)
    response = await push(
        registration, headers={"authorization": make(vapid_key, registration.endpoint)}
    )
    assert_error(response, 401, Errno.VAPID_MISSING)
    assert response.headers["www-authenticate"] == "vapid"
    await agent.no_frame()


async def test_legacy_webpush_authorization_is_accepted(
    restricted: Registration, vapid_key: VapidKey, agent: TestAgent
) -> None:
    signed = sign_vapid(vapid_key, restricted.endpoint, SUBJECT)
    headers = {"authorization": signed.legacy_authorization, "crypto-key": signed.crypto_key}
    response = await push(restricted, "legacy vapid", headers=headers)
    assert response.status_code == 201, response.text
    assert (await agent.next_notification()).plaintext == b"legacy vapid"


async def test_legacy_webpush_with_a_wrong_key_is_403(restricted: Registration) -> None:
    signed = sign_vapid(VapidKey.generate(), restricted.endpoint, SUBJECT)
    headers = {"authorization": signed.legacy_authorization, "crypto-key": signed.crypto_key}
    assert_error(await push(restricted, headers=headers), 403, Errno.VAPID_KEY_MISMATCH)


async def test_unrestricted_without_authorization_is_201(registration: Registration) -> None:
    assert (await push(registration)).status_code == 201


async def test_unrestricted_with_a_valid_token_is_201(registration: Registration) -> None:
    auth = authorization(VapidKey.generate(), registration.endpoint)
    assert (await push(registration, headers={"authorization": auth})).status_code == 201


@pytest.mark.parametrize("make", INVALID_TOKENS.values(), ids=INVALID_TOKENS.keys())
async def test_unrestricted_with_an_invalid_token_is_403(
    registration: Registration, make: Any
) -> None:
    # Documented choice: a token that is given is checked, even where none is needed.
    auth = make(VapidKey.generate(), registration.endpoint)
    assert_error(
        await push(registration, headers={"authorization": auth}), 403, Errno.VAPID_INVALID
    )


# Endpoint tokens ------------------------------------------------------------------------


class StoreSpy:
    """Counts every call the service makes to its store while installed."""

    async def proves_it_works(self, registration: Registration) -> None:
        """A good push is seen by the spy (so an empty record means something)."""
        before = len(self.calls)
        assert (await push(registration)).status_code == 201
        assert len(self.calls) > before

    def __init__(self, service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        store = service.service.store
        for name in dir(type(store)):
            if name.startswith("_") or not callable(getattr(store, name)):
                continue
            monkeypatch.setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await method(*args, **kwargs)

        return counted


def _flip(token: str, index: int) -> str:
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


def _bad_tokens(endpoint_token: str, message_token: str) -> dict[str, str]:
    middle = len(endpoint_token) // 2
    return {
        "garbage": "garbage",
        "not-base64": "%21%21%21" + endpoint_token[3:],
        "tampered-start": _flip(endpoint_token, 2),
        "tampered-middle": _flip(endpoint_token, middle),
        "tampered-tag": _flip(endpoint_token, len(endpoint_token) - 5),
        "truncated": endpoint_token[:-4],
        "short": endpoint_token[:20],
        "too-long": endpoint_token * 20,
        "extended": endpoint_token + "AAAA",
        "message-token": message_token,
    }


async def test_bad_endpoint_tokens_are_404_without_store_access(
    service: RunningService, registration: Registration, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = await push(registration)
    assert accepted.status_code == 201
    endpoint_token = registration.endpoint.rsplit("/", 1)[1]
    message_token = accepted.headers["location"].rsplit("/", 1)[1]
    spy = StoreSpy(service, monkeypatch)
    base = service.url + "/push/"
    for name, token in _bad_tokens(endpoint_token, message_token).items():
        response = await post(
            base + token,
            encrypted(registration),
            {"ttl": "60", "content-encoding": "aes128gcm"},
        )
        assert response.status_code == 404, (name, response.text)
        assert_error(response, 404, Errno.INVALID_TOKEN)
    assert spy.calls == []
    await spy.proves_it_works(registration)


async def test_endpoint_of_another_service_is_404(
    service: RunningService,
    registration: Registration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_service(tmp_path / "other") as other:
        stranger = await other.agent()
        foreign = await stranger.register()
        await stranger.close()
    token = foreign.endpoint.rsplit("/", 1)[1]
    spy = StoreSpy(service, monkeypatch)
    response = await post(
        service.url + "/push/" + token,
        encrypted(foreign),
        {"ttl": "60", "content-encoding": "aes128gcm"},
    )
    assert_error(response, 404, Errno.INVALID_TOKEN)
    assert spy.calls == []
    await spy.proves_it_works(registration)


async def test_bad_message_tokens_are_404_without_store_access(
    service: RunningService, registration: Registration, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = await push(registration)
    endpoint_token = registration.endpoint.rsplit("/", 1)[1]
    message_token = accepted.headers["location"].rsplit("/", 1)[1]
    spy = StoreSpy(service, monkeypatch)
    candidates = _bad_tokens(message_token, endpoint_token)
    candidates["endpoint-token"] = candidates.pop("message-token")
    async with httpx.AsyncClient(timeout=10) as client:
        for name, token in candidates.items():
            response = await client.delete(service.url + "/m/" + token)
            assert response.status_code == 404, (name, response.text)
            assert_error(response, 404, Errno.INVALID_TOKEN)
    assert spy.calls == []
    await spy.proves_it_works(registration)


# Routes ---------------------------------------------------------------------------------


async def test_health_is_200_json(service: RunningService) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(service.url + "/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("GET", "/push/anything", "POST"),
        ("PUT", "/push/anything", "POST"),
        ("DELETE", "/push/anything", "POST"),
        ("PUT", "/m/anything", "GET, DELETE"),  # GET: the message status
        ("POST", "/m/anything", "GET, DELETE"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    service: RunningService, method: str, path: str, allow: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, service.url + path)
    assert_error(response, 405, Errno.METHOD_NOT_ALLOWED)
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/nothing", "/push", "/m", "/healthz", "/wpush/v1/x"])
async def test_unknown_path_is_404_json(service: RunningService, path: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(service.url + path)
    assert_error(response, 404, Errno.NOT_FOUND)


async def test_plain_get_of_the_websocket_endpoint_asks_for_an_upgrade(
    service: RunningService,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(service.url + "/")
    assert response.status_code == 426
    assert response.headers["content-type"] == "application/json"
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.json()["code"] == 426


async def test_websocket_on_another_path_is_refused(service: RunningService) -> None:
    import websockets

    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(service.ws_url + "elsewhere", open_timeout=5)
    agent = await service.agent()  # the service keeps serving
    await agent.close()


async def test_delete_of_an_expired_message_is_404(tmp_path: Path) -> None:
    """Once its TTL has passed a message is gone, even before the sweep removes it."""
    async with running_service(tmp_path, expiry_sweep_interval=3600) as service:
        agent = await service.agent()
        registration = await agent.register()
        await agent.close()
        async with httpx.AsyncClient() as client:
            pushed = await client.post(registration.endpoint, headers={"ttl": "1"})
            assert pushed.status_code == 201
            await asyncio.sleep(1.2)
            gone = await client.delete(pushed.headers["location"])
            assert gone.status_code == 404
