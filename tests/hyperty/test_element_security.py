"""The push element as an attacker meets it: credentials, ownership, SSRF, identity, limits.

Each test is an attack that worked before the element authenticated runtimes (claim an
address, read an inbox, forge `from`, an answer or a cancel, unregister someone, make
the element POST anywhere and report what it heard) or a limit a client could exceed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hyperty.helpers import DOMAIN, Stack, events_of, wait_for
from tidings.hyperty import HypertyRuntime, Message, connection_url
from tidings.hyperty.identity import IdentityVerifier, KeySet
from tidings.hyperty.idp import IdentityProvider
from tidings.hyperty.mailboxes import Mailboxes
from tidings.service.limits import Rule
from tidings.webpush.b64 import b64url_encode

ISSUER = "https://idp.example.com"


def bearer(credential: str | None) -> dict[str, str]:
    return {} if credential is None else {"authorization": f"Bearer {credential}"}


def fake_subscription(endpoint: str) -> dict[str, Any]:
    """A well-formed subscription (a real P-256 key) at `endpoint`."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    keys = {"p256dh": b64url_encode(point), "auth": b64url_encode(secrets.token_bytes(16))}
    return {"endpoint": endpoint, "expirationTime": None, "keys": keys}


def registration(runtime: str, value: dict[str, Any], id: int = 1) -> dict[str, Any]:
    return {
        "id": id,
        "type": "create",
        "from": runtime + "/registry",
        "to": f"domain://push.{DOMAIN}",
        "body": {"value": value},
    }


async def inbox(
    stack: Stack, addresses: list[str], credential: str | None, timeout: float = 0
) -> httpx.Response:
    params = [("address", a) for a in addresses] + [("timeout", str(timeout))]
    async with httpx.AsyncClient(timeout=timeout + 10) as client:
        return await client.get(
            stack.element_url + "/inbox", params=params, headers=bearer(credential)
        )


async def attacker(stack: Stack, name: str = "mallory") -> tuple[HypertyRuntime, str]:
    """A runtime of its own, with a credential and an allocated hyperty."""
    runtime = await stack.runtime(name, listen=False)
    hyperty = await runtime.create_hyperty("connector")
    assert runtime.credential is not None
    return runtime, hyperty


class Recorder:
    """A local HTTP server that records requests and answers with a fixed status and body."""

    def __init__(self, status: int = 400, body: bytes = b"") -> None:
        self.requests: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                recorder.requests.append(("POST", self.path))
                self.send_response(status, "Secret Reason Phrase")
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Recorder]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)


# Credentials ------------------------------------------------------------------------------


async def test_the_first_registration_returns_a_credential_once_stored_hashed(
    stack: Stack,
) -> None:
    runtime = "hyperty-runtime://example.com/fresh"
    first = Message.from_dict((await stack.post(registration(runtime, {"hyperties": []}))).json())
    assert first.code == 200
    credential = first.value["credential"]
    assert isinstance(credential, str) and len(credential) >= 43  # 256 bits, base64url
    again = await stack.post(registration(runtime, {"hyperties": []}, 2), credential)
    answer = Message.from_dict(again.json())
    assert answer.code == 200 and "credential" not in answer.value
    # The store holds a hash: the credential itself is nowhere in the database.
    db = stack.element.store._db
    dump = "\n".join(db.iterdump()) if isinstance(db, sqlite3.Connection) else ""
    assert dump and credential not in dump


async def test_registering_as_another_runtime_needs_its_credential(stack: Stack) -> None:
    victim, _ = await stack.callee()
    thief, _ = await attacker(stack)
    endpoint = victim.subscription
    assert endpoint is not None
    mine = fake_subscription(stack.service.url + "/push/mine")
    takeover = registration(victim.url, {"subscription": mine, "hyperties": []})

    anonymous = await stack.post(takeover)
    assert anonymous.status_code == 401 and anonymous.json()["errno"] == 306
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert (await stack.post(takeover, "not-a-credential")).status_code == 401
    other = await stack.post(takeover, thief.credential)
    assert other.status_code == 403 and other.json()["errno"] == 307
    record = stack.element.store.get_runtime(victim.url)
    assert record is not None and record.subscription == victim.subscription


async def test_claiming_another_runtimes_hyperty_is_409(stack: Stack) -> None:
    victim, bob = await stack.callee()
    mine = fake_subscription(stack.service.url + "/push/mine")
    # A new runtime naming bob in its first registration...
    fresh = await stack.post(
        registration(
            "hyperty-runtime://example.com/squatter", {"subscription": mine, "hyperties": [bob]}
        )
    )
    assert Message.from_dict(fresh.json()).code == 409
    # ...or a registered one re-registering with bob.
    thief, own = await attacker(stack)
    claim = registration(thief.url, {"subscription": mine, "hyperties": [own, bob]}, 7)
    answer = Message.from_dict((await stack.post(claim, thief.credential)).json())
    assert answer.code == 409 and bob in (answer.description or "")
    record = stack.element.store.runtime_for(bob)
    assert record is not None and record.runtime == victim.url
    assert record.subscription == victim.subscription


async def test_addresses_come_from_the_allocation_not_the_runtime(stack: Stack) -> None:
    thief, own = await attacker(stack)
    assert (
        own.startswith("hyperty://example.com/") and stack.element.store.owner_of(own) == thief.url
    )
    invented = "hyperty://example.com/made-up"
    mine = fake_subscription(stack.service.url + "/push/mine")
    claim = registration(thief.url, {"subscription": mine, "hyperties": [invented]}, 8)
    answer = Message.from_dict((await stack.post(claim, thief.credential)).json())
    assert answer.code == 403 and "address-allocation" in (answer.description or "")
    # The reTHINK allocation message: create to domain://msg-node.<domain>/address-allocation.
    request = {
        "id": 9,
        "type": "create",
        "from": thief.url + "/address-allocation",
        "to": f"domain://msg-node.{DOMAIN}/address-allocation",
        "body": {"scheme": "hyperty", "value": {"number": 2, "allocationKey": thief.url}},
    }
    assert (await stack.post(request)).status_code == 401
    allocated = Message.from_dict((await stack.post(request, thief.credential)).json())
    assert (allocated.code, allocated.from_, allocated.to) == (
        200, request["to"], request["from"],
    )  # fmt: skip
    addresses = allocated.value["allocated"]
    assert len(set(addresses)) == 2 and own not in addresses
    assert all(stack.element.store.owner_of(a) == thief.url for a in addresses)
    objects = dict(request, body={"scheme": "connection", "value": {"number": 1}})
    refused = Message.from_dict((await stack.post(objects, thief.credential)).json())
    assert refused.code == 400 and refused.description.startswith("body.scheme")  # type: ignore[union-attr]


async def test_reading_another_runtimes_inbox(stack: Stack) -> None:
    _, bob = await stack.callee(listen=True)
    thief, own = await attacker(stack)
    assert (await inbox(stack, [bob], None)).status_code == 401
    assert (await inbox(stack, [bob], "forged")).status_code == 401
    stolen = await inbox(stack, [own, bob], thief.credential)
    assert stolen.status_code == 403 and bob in stolen.json()["message"]
    assert (await inbox(stack, [own], thief.credential)).json() == {"messages": []}


async def test_a_forged_from_or_source_is_403(stack: Stack) -> None:
    _, bob = await stack.callee()
    alice_runtime, alice = await stack.caller()
    thief, _ = await attacker(stack)
    invitation = alice.invitation(bob)
    as_alice = Message(1, "create", alice.url, bob, {"value": {}})
    assert (await stack.post(as_alice.to_dict())).status_code == 401
    forged = await stack.post(as_alice.to_dict(), thief.credential)
    assert forged.status_code == 403 and alice.url in forged.json()["message"]
    # A fresh Connection object, but claiming Alice as the caller hyperty.
    assert invitation.source == alice.url
    with_source = await stack.post(invitation.to_dict(), thief.credential)
    assert with_source.status_code == 403 and "body.source" in with_source.json()["message"]
    assert stack.kinds("pushed") == []
    # The same invitation from Alice's own runtime goes through.
    answer = await alice.call(bob, invitation=invitation, timeout=10)
    assert answer.code == 200 and alice_runtime.credential != thief.credential


async def test_forged_answers_and_cancels_are_403(stack: Stack) -> None:
    callee, bob = await stack.callee()
    await callee.close()  # offline: the invitation stays pending
    stack.runtimes.remove(callee)
    _, alice = await stack.caller()
    thief, _ = await attacker(stack)
    invitation = alice.invitation(bob)
    assert (await alice.invite(invitation)).code == 100  # type: ignore[union-attr]

    accept = invitation.response(200, value={"status": "accepted"})
    assert accept.from_ == bob
    forged = await stack.post(accept.to_dict(), thief.credential)
    assert forged.status_code == 403
    cancel = Message(5, "delete", connection_url(DOMAIN, invitation.from_.split("/")[3]), bob)
    assert cancel.from_ in invitation.from_
    forged_cancel = await stack.post(cancel.to_dict(), thief.credential)
    assert forged_cancel.status_code == 403
    assert [m.id for m in stack.element.pending_for(bob)] == [invitation.id]
    assert stack.kinds("routed") == [] and stack.kinds("cancelled") == []
    # Alice's own cancel is hers to send.
    assert (await alice.cancel(invitation)).value["replaced"] == 1  # type: ignore[union-attr]


async def test_unregistering_another_runtime(stack: Stack) -> None:
    victim, bob = await stack.callee()
    thief, _ = await attacker(stack)
    delete = {
        "id": 3,
        "type": "delete",
        "from": victim.url + "/registry",
        "to": f"domain://push.{DOMAIN}",
        "body": {},
    }
    assert (await stack.post(delete)).status_code == 401
    assert (await stack.post(delete, thief.credential)).status_code == 403
    assert stack.element.store.runtime_for(bob) is not None
    assert (await victim.unregister()).code == 200


# Server-side request forgery --------------------------------------------------------------


async def test_a_subscription_outside_the_trusted_push_services_is_refused(stack: Stack) -> None:
    _, bob = await stack.callee()
    _, alice = await stack.caller()
    with Recorder(status=200).running() as target:
        thief, own = await attacker(stack)
        for endpoint in (
            target.origin + "/admin/delete-everything",
            "http://169.254.169.254/latest/meta-data",
            stack.service.url.replace("http://", "https://") + "/push/x",
        ):
            claim = registration(
                thief.url, {"subscription": fake_subscription(endpoint), "hyperties": [own]}, 4
            )
            answer = Message.from_dict((await stack.post(claim, thief.credential)).json())
            assert answer.code == 400, endpoint
            assert answer.description.startswith("body.value.subscription.endpoint")  # type: ignore[union-attr]
        # Nothing was registered for push, so a message to `own` cannot reach the target.
        invitation = alice.invitation(own)
        assert (await alice.call(own, invitation=invitation, timeout=5)).code == 404
        assert target.requests == []
    assert stack.element.store.get_runtime(thief.url) is None
    assert bob


async def test_upstream_errors_are_not_echoed(stack: Stack) -> None:
    secret = b'{"code": 400, "errno": 999, "error": "Bad", "message": "upstream-secret-text"}'
    with Recorder(status=400, body=secret).running() as target:
        stack.element.push_origins = stack.element.push_origins | {target.origin}
        thief, own = await attacker(stack)
        claim = registration(
            thief.url,
            {"subscription": fake_subscription(target.origin + "/push/x"), "hyperties": [own]},
            4,
        )
        assert Message.from_dict((await stack.post(claim, thief.credential)).json()).code == 200
        _, alice = await stack.caller()
        answer = await alice.call(own, timeout=5)
        assert target.requests == [("POST", "/push/x")]
    assert answer.code == 502 and answer.from_ == stack.element.url
    assert answer.description == "the push service did not take the message"
    text = answer.to_json()
    for leak in ("upstream-secret-text", "Secret Reason", "errno"):
        assert leak not in text


# Identity assertions ----------------------------------------------------------------------


def _verifier(idp: IdentityProvider, **kwargs: Any) -> IdentityVerifier:
    return IdentityVerifier(ISSUER, DOMAIN, KeySet.from_jwks(idp.jwks()), **kwargs)


async def _admit(stack: Stack, runtime: HypertyRuntime, message: Message) -> Message:
    admitted = await stack.element.admit(message, credential=runtime.credential)
    return admitted.message


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_a_valid_assertion_is_marked_verified(stack: Stack, algorithm: str) -> None:
    idp = IdentityProvider(ISSUER, algorithm=algorithm)
    stack.element.identity = _verifier(idp)
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    identity = idp.identity("Alice", "alice", audience=DOMAIN)
    # The client claims another name in its profile: the element uses the verified claims.
    identity["userProfile"] = {"name": "The CEO", "username": "ceo@example.com"}
    identity["verified"] = True
    invitation = alice.invitation(bob).with_body(identity=identity)
    passed = (await _admit(stack, runtime, invitation)).identity
    assert passed is not None and passed["verified"] is True and passed["idp"] == ISSUER
    assert passed["userProfile"] == {
        "userURL": "user://idp.example.com/alice",
        "username": "alice@idp.example.com",
        "name": "Alice",
    }


async def test_the_woken_callee_sees_a_verified_caller(stack: Stack, tmp_path: Path) -> None:
    idp = IdentityProvider(ISSUER)
    with idp.serve() as jwks_url:  # the JWKS by URL, as a real provider publishes it
        stack.element.identity = IdentityVerifier(ISSUER, DOMAIN, jwks_url)
        callee, bob = await stack.callee()
        _, alice = await stack.caller()
        identity = idp.identity("Alice", "alice", audience=DOMAIN)
        invitation = alice.invitation(bob).with_body(identity=identity)
        answer = await alice.call(bob, invitation=invitation, timeout=10)
    assert answer.code == 200
    ring = await wait_for(lambda: events_of(callee, "ring"))
    assert ring[0]["verified"] is True and ring[0]["caller"] == "Alice"


async def test_the_jwks_may_be_a_file(stack: Stack, tmp_path: Path) -> None:
    idp = IdentityProvider(ISSUER)
    verifier = IdentityVerifier(ISSUER, DOMAIN, idp.write_jwks(tmp_path / "jwks.json"))
    claims = await verifier.verify(idp.assertion("user://idp.example.com/a", audience=DOMAIN))
    assert claims["sub"] == "user://idp.example.com/a"
    # PyJWT, as an independent implementation, agrees with the provider's tokens.
    token = idp.assertion("user://idp.example.com/a", audience=DOMAIN)
    key = jwt.PyJWKSet.from_dict(idp.jwks()).keys[0].key
    assert jwt.decode(token, key, algorithms=["ES256"], audience=DOMAIN, issuer=ISSUER)["sub"]


async def test_an_assertion_without_its_proof_is_not_verified(stack: Stack) -> None:
    stack.element.identity = _verifier(IdentityProvider(ISSUER))
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    claimed = {"idp": ISSUER, "userProfile": {"name": "The CEO"}, "verified": True}
    passed = await _admit(stack, runtime, alice.invitation(bob).with_body(identity=claimed))
    assert passed.identity == {"idp": ISSUER, "userProfile": {"name": "The CEO"}, "verified": False}
    # Without an identity provider nothing is marked, and a client's mark is removed.
    stack.element.identity = None
    plain = await _admit(stack, runtime, alice.invitation(bob).with_body(identity=claimed))
    assert plain.identity is not None and "verified" not in plain.identity


def _bad_assertions(idp: IdentityProvider) -> dict[str, str]:
    other = IdentityProvider(ISSUER, kid=idp.kid)
    now = time.time()
    subject = "user://idp.example.com/alice"
    good = idp.assertion(subject, audience=DOMAIN)
    header, payload, signature = good.split(".")
    other_claims = b64url_encode(b'{"iss":"' + ISSUER.encode() + b'","aud":"x","exp":9999999999}')
    none_header = b64url_encode(json.dumps({"alg": "none", "kid": idp.kid}).encode())
    hs256 = jwt.encode(
        {"iss": ISSUER, "aud": DOMAIN, "sub": subject, "exp": int(now) + 60},
        "secret-key-of-thirty-two-bytes!!",
        algorithm="HS256",
        headers={"kid": idp.kid},
    )
    return {
        "expired": idp.assertion(subject, audience=DOMAIN, now=now - 3600, ttl=60),
        "wrong audience": idp.assertion(subject, audience="other.example.org"),
        "wrong issuer": idp.sign(
            {"iss": "https://evil.example", "aud": DOMAIN, "sub": subject, "exp": int(now) + 60}
        ),
        "no exp": idp.sign({"iss": ISSUER, "aud": DOMAIN, "sub": subject}),
        "another key": other.assertion(subject, audience=DOMAIN),
        "alg none": f"{none_header}.{payload}.",
        "hs256": hs256,
        "unknown kid": idp.sign(
            {"iss": ISSUER, "aud": DOMAIN, "sub": subject, "exp": int(now) + 60},
            header={"kid": "nope"},
        ),
        "tampered": f"{header}.{other_claims}.{signature}",
        "garbage": "not.a.jwt",
    }


async def test_an_invalid_assertion_is_refused_with_403(stack: Stack) -> None:
    idp = IdentityProvider(ISSUER)
    stack.element.identity = _verifier(idp)
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    for why, assertion in _bad_assertions(idp).items():
        identity = {"idp": ISSUER, "assertion": assertion, "userProfile": {"name": "Alice"}}
        invitation = alice.invitation(bob).with_body(identity=identity)
        response = await stack.post(invitation.to_dict(), runtime.credential)
        assert response.status_code == 403, why
        assert response.json()["message"].startswith("body.identity.assertion"), why
    assert stack.kinds("pushed") == []


# Limits -----------------------------------------------------------------------------------


async def test_registrations_per_client_address_are_limited(stack: Stack) -> None:
    stack.element.limits = replace(stack.element.limits, registrations_per_client=Rule(0.01, 3))
    statuses = []
    for index in range(4):
        runtime = f"hyperty-runtime://example.com/flood-{index}"
        response = await stack.post(registration(runtime, {"hyperties": []}))
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert int(response.headers["retry-after"]) >= 1 and response.json()["errno"] == 308
    assert stack.element.store.runtime_count() == 3


async def test_hyperties_per_runtime_are_limited(stack: Stack) -> None:
    stack.element.limits = replace(stack.element.limits, hyperties_per_runtime=2)
    thief, _ = await attacker(stack)
    await thief.allocate(1)
    with pytest.raises(Exception, match="answered 429"):
        await thief.allocate(1)
    assert stack.element.store.address_count(thief.url) == 2
    with pytest.raises(Exception, match="answered 400"):
        await thief.allocate(stack.element.limits.allocation_batch + 1)


async def test_messages_per_runtime_are_limited(stack: Stack) -> None:
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    stack.element.limits = replace(stack.element.limits, messages_per_runtime=Rule(0.01, 3))
    statuses = []
    for _ in range(4):
        message = Message(runtime.next_id(), "update", alice.url, bob, {"value": {}})
        statuses.append((await stack.post(message.to_dict(), runtime.credential)).status_code)
    assert statuses == [200, 200, 200, 429]


async def test_long_polls_per_runtime_are_capped(stack: Stack) -> None:
    stack.element.limits = replace(stack.element.limits, polls_per_runtime=1)
    thief, own = await attacker(stack)
    first = asyncio.create_task(inbox(stack, [own], thief.credential, timeout=3))
    await wait_for(lambda: stack.element.open_polls(thief.url) == 1, 10)
    second = await inbox(stack, [own], thief.credential)
    assert second.status_code == 429 and second.json()["errno"] == 309
    assert (await first).status_code == 200
    assert stack.element.open_polls(thief.url) == 0


async def test_an_inbox_is_bounded_in_messages_and_bytes(stack: Stack) -> None:
    boxes = Mailboxes(max_messages=2, max_bytes=10_000)
    small = Message(1, "update", "hyperty://example.com/a", "hyperty://example.com/b")
    assert boxes.put("hyperty://example.com/b", small)
    assert boxes.put("hyperty://example.com/b", small)
    assert not boxes.put("hyperty://example.com/b", small)
    big = small.with_body(value="x" * 6000)
    assert boxes.put("hyperty://example.com/c", big)
    assert not boxes.put("hyperty://example.com/c", big)
    assert boxes.queued("hyperty://example.com/c") == (1, len(big.encoded()))
    assert await boxes.take(["hyperty://example.com/c"], 0) == [big]
    assert boxes.queued("hyperty://example.com/c") == (0, 0)

    # At the element: a connected runtime that does not read its inbox gets 503s.
    stack.element.mailboxes.max_messages = 2
    stack.element.mailboxes.grace = 120.0
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    await stack.element.mailboxes.take([bob], 0)  # bob counts as connected for a while
    codes = []
    for _ in range(3):
        message = Message(runtime.next_id(), "update", alice.url, bob, {"value": {}})
        codes.append((await stack.element.deliver(message)).answer.code)
    assert codes == [100, 100, 503]
    assert stack.element.mailboxes.queued(bob)[0] == 2


async def test_the_runtimes_an_element_holds_are_bounded(stack: Stack) -> None:
    stack.element.limits = replace(stack.element.limits, max_runtimes=2)
    codes = []
    for index in range(3):
        runtime = f"hyperty-runtime://example.com/many-{index}"
        codes.append(
            Message.from_dict(
                (await stack.post(registration(runtime, {"hyperties": []}))).json()
            ).code
        )
    assert codes == [200, 200, 503]
    assert stack.element.store.runtime_count() == 2


async def test_data_objects_bound_to_a_runtime_are_bounded(stack: Stack) -> None:
    stack.element.limits = replace(stack.element.limits, objects_per_runtime=2)
    _, bob = await stack.callee()
    runtime, alice = await stack.caller()
    calls = [alice.invitation(bob) for _ in range(3)]
    for invitation in calls:
        cancel = Message(runtime.next_id(), "delete", invitation.from_.rsplit("/", 1)[0], bob)
        assert (await stack.post(cancel.to_dict(), runtime.credential)).status_code == 200
    assert stack.element.store.object_count(runtime.url) == 2
    # The oldest was released: it is anyone's again, the newer ones are still Alice's.
    thief, _ = await attacker(stack)
    oldest, newest = (c.from_.rsplit("/", 1)[0] for c in (calls[0], calls[2]))
    assert stack.element.owns(thief.url, oldest)
    assert not stack.element.owns(thief.url, newest)


def test_registrations_made_without_credentials_are_dropped(tmp_path: Path) -> None:
    from tidings.hyperty.store import ElementStore

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before credentials
        db.executescript(
            "CREATE TABLE runtimes (runtime TEXT PRIMARY KEY, subscription TEXT NOT NULL, "
            "user TEXT, registered_at REAL NOT NULL);"
            "CREATE TABLE hyperties (hyperty TEXT PRIMARY KEY, runtime TEXT NOT NULL);"
            "INSERT INTO runtimes VALUES ('hyperty-runtime://example.com/old', '{}', NULL, 0);"
            "INSERT INTO hyperties VALUES ('hyperty://example.com/h', "
            "'hyperty-runtime://example.com/old');"
        )
    db.close()
    store = ElementStore(path)
    try:
        assert store.runtime_count() == 0 and store.runtime_for("hyperty://example.com/h") is None
        assert store.create_runtime("hyperty-runtime://example.com/old", "c", 0.0)
        assert store.runtime_by_credential("c") == "hyperty-runtime://example.com/old"
    finally:
        store.close()
