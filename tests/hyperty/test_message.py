"""The reTHINK message model, addresses and the push element's decisions: no I/O."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tidings.hyperty import (
    MESSAGE_TYPES,
    AddressError,
    Message,
    MessageError,
    MessageTooLarge,
    Route,
    check_response,
    classify,
    connection_url,
    hyperty_url,
    is_cancel,
    is_data_object,
    is_hyperty,
    is_invitation,
    is_runtime,
    object_url,
    parse_address,
    parse_registration,
    plan_push,
    push_element_url,
    registry_url,
    runtime_registry_url,
    runtime_url,
    topic_for,
    urgency_for,
    user_url,
)
from tidings.webpush import MAX_PLAINTEXT

CALLER = "hyperty://example.com/5b7c0cbb-1b5a-4cf2-a6b0-3b1f0f4a6c11"
CALLEE = "hyperty://example.com/9f3c55d2-79b5-4a2c-a1a5-2b0e4d0c4e7f"
CONNECTION = "connection://example.com/7d1e2a40-8a30-4bd4-b4e4-1d8c1a6a5a10"
SCHEMA = "hyperty-catalogue://catalogue.example.com/.well-known/dataschema/Connection"
RUNTIME = "hyperty-runtime://example.com/42ab8a1e-40a5-4e5c-9d1e-b0e8e8e1a001"
ELEMENT = "domain://push.example.com"

IDENTITY = {
    "idp": "example.com",
    "assertion": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
    "userProfile": {
        "username": "alice@example.com",
        "userURL": "user://example.com/alice",
        "name": "Alice",
        "picture": "https://example.com/alice.png",
    },
}

SUBSCRIPTION = {
    "endpoint": "http://127.0.0.1:8080/push/abc",
    "expirationTime": None,
    "keys": {
        "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1Xbjh"
        "azAkj7I99e8QcYP7DkM",
        "auth": "tBHItJI5svbpez7KI4CCXg",
    },
}

#: reTHINK messages as its specs and implementations write them.
SAMPLES: list[dict[str, Any]] = [
    {  # the Connection invitation (callee side of an incoming call)
        "id": 1,
        "type": "create",
        "from": CONNECTION + "/subscription",
        "to": CALLEE,
        "body": {
            "source": CALLER,
            "schema": SCHEMA,
            "identity": IDENTITY,
            "value": {"name": "call", "owner": CALLER, "status": "created"},
        },
    },
    {  # its acceptance
        "id": 1,
        "type": "response",
        "from": CALLEE,
        "to": CONNECTION + "/subscription",
        "body": {"code": 200, "description": "OK", "value": {"status": "accepted"}},
    },
    {  # declined: Busy Here
        "id": 1,
        "type": "response",
        "from": CALLEE,
        "to": CONNECTION + "/subscription",
        "body": {"code": 486},
    },
    {  # the spec's list form of `to`
        "id": 7,
        "type": "update",
        "from": CONNECTION,
        "to": [CALLEE, CALLER],
        "body": {"attribute": "status", "value": "ringing", "source": CALLER},
    },
    {"id": 8, "type": "delete", "from": CONNECTION, "to": CALLEE, "body": {"source": CALLER}},
    {
        "id": 9,
        "type": "subscribe",
        "from": CALLEE,
        "to": CONNECTION + "/subscription",
        "body": {"resource": CONNECTION, "p2p": False},
    },
    {"id": 10, "type": "unsubscribe", "from": CALLEE, "to": CONNECTION + "/subscription"},
    {
        "id": 11,
        "type": "read",
        "from": CALLER,
        "to": "domain://registry.example.com",
        "body": {"resource": "user://example.com/bob"},
    },
    {
        "id": 12,
        "type": "forward",
        "from": CALLER,
        "to": "domain://msg-node.example.com/sm",
        "body": {"value": {"type": "create"}},
    },
    {
        "id": 13,
        "type": "execute",
        "from": CALLER,
        "to": CALLEE,
        "body": {"method": "mute", "params": [True]},
    },
    {  # a runtime registering at the push element
        "id": 14,
        "type": "create",
        "from": RUNTIME + "/registry",
        "to": ELEMENT,
        "body": {
            "value": {
                "subscription": SUBSCRIPTION,
                "hyperties": [CALLEE],
                "user": "user://example.com/bob",
            }
        },
    },
    {  # extra top-level fields pass through
        "id": 15,
        "type": "update",
        "from": CALLER,
        "to": CALLEE,
        "body": {},
        "x-trace": "t1",
    },
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s['type']}-{s['id']}")
def test_round_trip(sample: dict[str, Any]) -> None:
    expected = {"body": {}, **sample}
    message = Message.from_json(json.dumps(sample))
    assert message.to_dict() == expected
    assert json.loads(message.to_json()) == expected
    assert Message.from_json(message.encoded()) == message


def test_reading_the_fields() -> None:
    invitation = Message.from_dict(SAMPLES[0])
    assert invitation.from_ == CONNECTION + "/subscription"
    assert invitation.recipients == (CALLEE,)
    assert invitation.source == CALLER
    assert invitation.schema == SCHEMA
    assert invitation.identity == IDENTITY
    assert invitation.caller_name == "Alice"
    assert invitation.value["owner"] == CALLER
    assert invitation.code is None and not invitation.is_response
    update = Message.from_dict(SAMPLES[3])
    assert update.recipients == (CALLEE, CALLER) and update.target == CALLEE
    assert isinstance(update.to_dict()["to"], list)
    assert Message.from_dict(SAMPLES[2]).is_final
    assert not Message(1, "response", CALLEE, CALLER, {"code": 100}).is_final
    assert MESSAGE_TYPES == (
        "create", "update", "delete", "read", "subscribe", "unsubscribe", "response", "forward",
        "execute",
    )  # fmt: skip


def test_a_response_keeps_the_id_and_swaps_from_and_to() -> None:
    invitation = Message.from_dict(SAMPLES[0])
    busy = invitation.response(486)
    assert (busy.id, busy.type, busy.from_, busy.to) == (1, "response", CALLEE, invitation.from_)
    assert busy.body == {"code": 486, "description": "Busy Here"}
    check_response(invitation, busy)
    ok = invitation.response(200, "accepted", {"status": "accepted"})
    assert ok.body == {"code": 200, "description": "accepted", "value": {"status": "accepted"}}
    update = Message.from_dict(SAMPLES[3])
    check_response(update, update.response(200, from_=CALLER))


@pytest.mark.parametrize(
    ("answer", "field", "text"),
    [
        (Message(2, "response", CALLEE, CONNECTION, {"code": 200}), "id",
         "keeps the request's id 1"),
        (Message(1, "response", CALLEE, CALLER, {"code": 200}), "to",
         "back to the request's sender"),
        (Message(1, "response", CALLER, CONNECTION + "/subscription", {"code": 200}), "from",
         "from the request's recipient"),
        (Message(1, "update", CALLEE, CONNECTION + "/subscription"), "type", "expected a response"),
    ],
)  # fmt: skip
def test_check_response_errors(answer: Message, field: str, text: str) -> None:
    with pytest.raises(MessageError) as caught:
        check_response(Message.from_dict(SAMPLES[0]), answer)
    assert caught.value.field == field and text in str(caught.value)


def test_a_response_is_not_answered() -> None:
    with pytest.raises(MessageError, match="type: a response is not answered"):
        Message.from_dict(SAMPLES[1]).response(200)


def _with(**changes: Any) -> dict[str, Any]:
    sample = json.loads(json.dumps(SAMPLES[0]))
    for key, value in changes.items():
        if key.startswith("body_"):
            name = key.removeprefix("body_")
            if value is ...:
                sample["body"].pop(name)
            else:
                sample["body"][name] = value
        elif value is ...:
            sample.pop(key)
        else:
            sample[key] = value
    return sample


PROFILE = {**IDENTITY["userProfile"]}

#: (the message, the field named, words of the explanation): every check of the model.
INVALID: list[tuple[object, str, str]] = [
    ([1, 2], "message", "must be a JSON object, got list"),
    ("null", "message", "must be a JSON object, got null"),
    (_with(id=...), "id", "is required"),
    (_with(type=...), "type", "is required"),
    (_with(to=...), "to", "is required"),
    ({k: v for k, v in SAMPLES[0].items() if k != "from"}, "from", "is required"),
    (_with(id="1"), "id", "non-negative integer, got '1'"),
    (_with(id=-1), "id", "non-negative integer"),
    (_with(id=True), "id", "non-negative integer"),
    (_with(id=1.5), "id", "non-negative integer"),
    (_with(type="invite"), "type", "'invite' is not a reTHINK message type (one of create,"),
    (_with(type=3), "type", "must be a string, got int"),
    (_with(**{"from": "alice"}), "from", "is not an address of the form scheme://domain/path"),
    (_with(**{"from": 42}), "from", "must be an address string, got int"),
    (_with(**{"from": "hyperty://exa mple.com/x"}), "from", "is not an address"),
    (_with(to="bob"), "to", "is not an address"),
    (_with(to=[]), "to", "the list of recipients is empty"),
    (_with(to=[CALLEE, 5]), "to[1]", "must be an address string, got int"),
    (_with(to={"url": CALLEE}), "to", "must be an address or a list of addresses, got dict"),
    (_with(body=[]), "body", "must be an object, got list"),
    (_with(body="x"), "body", "must be an object, got str"),
    (_with(body_code=200), "body.code", "only a response carries a status code, not a create"),
    ({**SAMPLES[1], "body": {}}, "body.code", "a response needs a status code"),
    ({**SAMPLES[1], "body": {"code": "200"}}, "body.code", "integer status from 100 to 699"),
    ({**SAMPLES[1], "body": {"code": 99}}, "body.code", "integer status from 100 to 699"),
    ({**SAMPLES[1], "body": {"code": 700}}, "body.code", "integer status from 100 to 699"),
    ({**SAMPLES[1], "body": {"code": True}}, "body.code", "integer status"),
    ({**SAMPLES[1], "body": {"code": 200, "description": 5}}, "body.description",
     "must be a string, got int"),
    (_with(body_schema=["Connection"]), "body.schema", "must be a string, got list"),
    (_with(body_attribute=1), "body.attribute", "must be a string"),
    (_with(body_source="caller"), "body.source", "is not an address"),
    (_with(body_resource=None), "body.resource", "must be an address string, got NoneType"),
    (_with(body_p2p="yes"), "body.p2p", "must be true or false, got str"),
    (_with(body_identity="alice"), "body.identity", "must be an object, got str"),
    (_with(body_identity={"idp": 1}), "body.identity.idp", "must be a string, got int"),
    (_with(body_identity={"assertion": {}}), "body.identity.assertion", "must be a string"),
    (_with(body_identity={"userProfile": "alice"}), "body.identity.userProfile",
     "must be an object"),
    (_with(body_identity={"userProfile": {**PROFILE, "name": 7}}),
     "body.identity.userProfile.name", "must be a string"),
    (_with(body_identity={"userProfile": {**PROFILE, "username": None}}),
     "body.identity.userProfile.username", "must be a string, got null"),
    (_with(body_identity={"userProfile": {**PROFILE, "picture": 1}}),
     "body.identity.userProfile.picture", "must be a string"),
    (_with(body_identity={"userProfile": {**PROFILE, "userURL": "alice"}}),
     "body.identity.userProfile.userURL", "is not an address"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field", "text"), INVALID)
def test_validation_errors(data: object, field: str, text: str) -> None:
    source = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(MessageError) as caught:
        Message.from_json(source)
    assert caught.value.field == field
    assert text in str(caught.value), str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_text_that_is_not_json() -> None:
    with pytest.raises(MessageError, match=r"^message: is not JSON"):
        Message.from_json("{'id': 1}")
    with pytest.raises(MessageError, match=r"^message: is not JSON"):
        Message.from_json(b"\xff\xfe")


def test_building_in_python_is_checked_too() -> None:
    with pytest.raises(MessageError, match="type: 'invite'"):
        Message(1, "invite", CALLER, CALLEE)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="to: the list of recipients is empty"):
        Message(1, "create", CALLER, ())


# Addresses ----------------------------------------------------------------------------------


def test_address_helpers() -> None:
    assert re.fullmatch(r"hyperty://example\.com/[0-9a-f-]{36}", hyperty_url("example.com"))
    assert hyperty_url("example.com", "abc") == "hyperty://example.com/abc"
    assert runtime_url("example.com", "r1") == "hyperty-runtime://example.com/r1"
    assert runtime_registry_url("hyperty-runtime://example.com/r1") == (
        "hyperty-runtime://example.com/r1/registry"
    )
    assert push_element_url("example.com") == "domain://push.example.com"
    assert registry_url("example.com") == "domain://registry.example.com"
    assert user_url("example.com", "alice") == "user://example.com/alice"
    assert connection_url("example.com", "c1") == "connection://example.com/c1"
    address = parse_address("connection://example.com:8443/c1/subscription")
    assert (address.scheme, address.domain, address.path) == (
        "connection", "example.com:8443", "c1/subscription",
    )  # fmt: skip
    assert address.segments == ("c1", "subscription")
    assert str(address) == "connection://example.com:8443/c1/subscription"
    assert str(parse_address("domain://push.example.com")) == "domain://push.example.com"


def test_address_kinds() -> None:
    assert is_hyperty(CALLEE) and not is_hyperty(RUNTIME) and not is_hyperty("hyperty://x.com")
    assert is_runtime(RUNTIME) and is_runtime(RUNTIME + "/registry") and not is_runtime(CALLEE)
    assert is_data_object(CONNECTION) and is_data_object("comm://example.com/room/subscription")
    for url in (CALLEE, RUNTIME, ELEMENT, "user://example.com/a", "nonsense"):
        assert not is_data_object(url), url
    assert object_url(CONNECTION + "/subscription") == CONNECTION
    assert object_url(CONNECTION + "/children/chat") == CONNECTION
    assert object_url(CONNECTION) == CONNECTION


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (lambda: parse_address("example.com/x"), "is not an address of the form"),
        (lambda: parse_address(5), "must be a string, got int"),
        (lambda: hyperty_url("exa mple.com"), "is not a domain"),
        (lambda: hyperty_url("example.com", "a/b"), "is not a usable identifier"),
        (lambda: runtime_registry_url(CALLEE), "is not a hyperty-runtime:// address"),
        (lambda: object_url(CALLEE), "is not a data object URL"),
    ],
)
def test_address_errors(call: Any, text: str) -> None:
    with pytest.raises(AddressError, match=text):
        call()


# The element's decisions --------------------------------------------------------------------


def test_topic_is_derived_from_the_data_object() -> None:
    topic = topic_for(CONNECTION)
    assert len(topic) == 32 and re.fullmatch(r"[A-Za-z0-9_-]{32}", topic)
    assert base64.urlsafe_b64decode(topic)  # decodes: base64url, no padding needed
    assert topic_for(CONNECTION + "/subscription") == topic  # invitation and cancel agree
    assert topic_for(connection_url("example.com", "other")) != topic
    assert CONNECTION not in topic


def test_invitation_cancel_and_urgency() -> None:
    invitation = Message.from_dict(SAMPLES[0])
    cancel = Message.from_dict(SAMPLES[4])
    assert is_invitation(invitation) and not is_cancel(invitation)
    assert is_cancel(cancel) and not is_invitation(cancel)
    assert urgency_for(invitation) == "high" and urgency_for(cancel) == "high"
    chat = Message(3, "create", "comm://example.com/room/subscription", CALLEE, {})
    assert not is_invitation(chat) and urgency_for(chat) == "normal"
    by_schema = Message(4, "create", CALLER, CALLEE, {"schema": SCHEMA})
    assert is_invitation(by_schema)


def test_plan_push_headers() -> None:
    invitation = Message.from_dict(SAMPLES[0])
    plan = plan_push(invitation)
    assert plan.payload == invitation.encoded()
    assert (plan.ttl, plan.urgency, plan.topic, plan.slimmed) == (
        60,
        "high",
        topic_for(CONNECTION),
        False,
    )
    cancel = plan_push(Message.from_dict(SAMPLES[4]), ttl=30)
    assert (cancel.ttl, cancel.topic) == (30, plan.topic)
    plain = plan_push(Message(5, "execute", CALLER, CALLEE, {}))
    assert (plain.urgency, plain.topic) == ("normal", None)


def test_an_oversized_invitation_loses_its_assertion() -> None:
    big = dict(IDENTITY, assertion="A" * 3600)
    invitation = Message.from_dict(_with(body_identity=big))
    assert len(invitation.encoded()) > MAX_PLAINTEXT
    plan = plan_push(invitation)
    assert plan.slimmed and len(plan.payload) <= MAX_PLAINTEXT
    assert "assertion" not in plan.message.identity  # type: ignore[operator]
    assert plan.message.caller_name == "Alice"
    assert json.loads(plan.payload)["body"]["identity"]["userProfile"] == IDENTITY["userProfile"]


def test_a_message_too_large_even_slimmed_is_refused() -> None:
    invitation = Message.from_dict(_with(body_value={"sdp": "v=0\r\n" + "a" * 4000}))
    with pytest.raises(MessageTooLarge) as caught:
        plan_push(invitation)
    assert caught.value.limit == MAX_PLAINTEXT and caught.value.size > MAX_PLAINTEXT
    assert "over the 3993-byte limit of one Web Push message" in str(caught.value)
    exact = Message.from_dict(_with(body_identity={"idp": "example.com"}))
    padding = MAX_PLAINTEXT - len(exact.encoded())
    fits = exact.with_body(value={**exact.value, "pad": ""})
    fits = fits.with_body(value={**exact.value, "pad": "x" * (padding - len(',"pad":""'))})
    assert len(fits.encoded()) == MAX_PLAINTEXT
    assert not plan_push(fits).slimmed


def test_classify() -> None:
    register = Message.from_dict(SAMPLES[10])
    assert classify(register, ELEMENT) is Route.REGISTER
    unregister = Message(2, "delete", RUNTIME + "/registry", ELEMENT)
    assert classify(unregister, ELEMENT) is Route.UNREGISTER
    assert classify(Message.from_dict(SAMPLES[0]), ELEMENT) is Route.DELIVER
    assert classify(Message.from_dict(SAMPLES[1]), ELEMENT) is Route.RESPONSE
    with pytest.raises(MessageError, match=r"takes create \(register\) and delete"):
        classify(Message(3, "update", RUNTIME + "/registry", ELEMENT), ELEMENT)
    with pytest.raises(MessageError, match="come from a runtime's registry"):
        classify(Message(3, "create", CALLER, ELEMENT), ELEMENT)
    with pytest.raises(MessageError, match="delivers to hyperty:// addresses"):
        classify(Message(3, "create", CALLER, "user://example.com/bob"), ELEMENT)


def test_parse_registration() -> None:
    registration = parse_registration(Message.from_dict(SAMPLES[10]), "example.com")
    assert registration.runtime == RUNTIME
    assert registration.hyperties == (CALLEE,)
    assert registration.subscription == SUBSCRIPTION
    assert registration.user == "user://example.com/bob"
    # A runtime that holds its message connection registers without a subscription.
    bare = parse_registration(_registration({"hyperties": []}), "example.com")
    assert bare.subscription is None and bare.hyperties == ()


def _registration(value: Any, sender: str = RUNTIME + "/registry") -> Message:
    return Message(14, "create", sender, ELEMENT, {"value": value})


@pytest.mark.parametrize(
    ("value", "field", "text"),
    [
        (None, "body.value", "a registration carries"),
        ({"subscription": [], "hyperties": [CALLEE]}, "body.value.subscription",
         "PushSubscription JSON"),
        ({"subscription": {"endpoint": "ftp://x"}, "hyperties": [CALLEE]},
         "body.value.subscription", "endpoint"),
        ({"subscription": SUBSCRIPTION}, "body.value.hyperties", "must be a list"),
        ({"subscription": SUBSCRIPTION, "hyperties": [CALLER, RUNTIME]},
         "body.value.hyperties[1]", "is not hyperty://"),
        ({"subscription": SUBSCRIPTION, "hyperties": ["hyperty://other.org/x"]},
         "body.value.hyperties[0]", "not in this push element's domain"),
        ({"subscription": SUBSCRIPTION, "hyperties": [CALLEE], "user": 5}, "body.value.user",
         "must be a user:// address"),
    ],
)  # fmt: skip
def test_registration_errors(value: Any, field: str, text: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_registration(_registration(value), "example.com")
    assert caught.value.field == field and text in str(caught.value), str(caught.value)


def test_registration_from_another_domain() -> None:
    message = _registration(
        {"subscription": SUBSCRIPTION, "hyperties": [CALLEE]},
        "hyperty-runtime://other.org/r/registry",
    )
    with pytest.raises(MessageError, match=r"not in the domain 'example\.com'"):
        parse_registration(message, "example.com")
