"""Subscription.from_json / to_json and the validation message for each field."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tidings.webpush import (
    InvalidKeyError,
    InvalidSubscription,
    Subscription,
    b64url_encode,
    load_p256_public_key,
)
from webpush.helpers import UserAgentKeys


def browser_json(ua: UserAgentKeys, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "endpoint": "https://push.example.net/wpush/v2/gAAAAA",
        "expirationTime": None,
        "keys": {"p256dh": ua.public_b64, "auth": ua.auth_b64},
    }
    data.update(changes)
    return data


def test_round_trip(ua: UserAgentKeys) -> None:
    data = browser_json(ua)
    sub = Subscription.from_json(data)
    assert sub.p256dh == ua.public and sub.auth == ua.auth
    assert sub.to_json() == data
    assert Subscription.from_json(json.dumps(data)) == sub
    assert Subscription.from_json(json.dumps(data).encode()) == sub
    assert sub.public_key.public_numbers() == ua.private_key.public_key().public_numbers()


def test_pywebpush_shape_with_padding_and_no_expiration(ua: UserAgentKeys) -> None:
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    info = {
        "endpoint": "http://localhost:8080/push/1",
        "keys": {"p256dh": pad(ua.public_b64), "auth": pad(ua.auth_b64)},
    }
    sub = Subscription.from_json(info)
    assert sub.expiration_time is None
    assert sub.to_json()["keys"] == {"p256dh": ua.public_b64, "auth": ua.auth_b64}


def test_expiration_time_kept(ua: UserAgentKeys) -> None:
    sub = Subscription.from_json(browser_json(ua, expirationTime=1700000000000))
    assert sub.to_json()["expirationTime"] == 1700000000000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"endpoint": None}, "endpoint"),
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": "ftp://x/y"}, "endpoint"),
        ({"endpoint": "https:///nohost"}, "endpoint"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"endpoint": "https://x:99999/"}, "endpoint"),
        ({"keys": None}, "keys"),
        ({"keys": {"auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys.p256dh"),
        ({"keys": {"p256dh": "!!", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys.p256dh"),
        ({"keys": {"p256dh": "BAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys.p256dh"),
        (
            {
                "keys": {
                    "p256dh": b64url_encode(b"\x04" + bytes(64)),
                    "auth": "AAAAAAAAAAAAAAAAAAAAAA",
                }
            },
            "keys.p256dh",
        ),
        ({"expirationTime": "soon"}, "expirationTime"),
        ({"expirationTime": True}, "expirationTime"),
    ],
)
def test_invalid_fields_are_named(ua: UserAgentKeys, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSubscription, match=field.replace(".", r"\.")):
        Subscription.from_json(browser_json(ua, **change))


@pytest.mark.parametrize("auth", [b"", os.urandom(15), os.urandom(17)])
def test_auth_must_be_16_bytes(ua: UserAgentKeys, auth: bytes) -> None:
    data = browser_json(ua)
    data["keys"]["auth"] = b64url_encode(auth)
    with pytest.raises(InvalidSubscription, match=r"keys\.auth"):
        Subscription.from_json(data)


@pytest.mark.parametrize("text", ["", "[]", "{", "null", '"x"', "[" * 100000])
def test_not_an_object(text: str) -> None:
    with pytest.raises(InvalidSubscription):
        Subscription.from_json(text)


def test_direct_construction_is_validated(ua: UserAgentKeys) -> None:
    Subscription("https://a.example/1", ua.public, ua.auth)
    with pytest.raises(InvalidSubscription, match="auth"):
        Subscription("https://a.example/1", ua.public, b"short")
    with pytest.raises(InvalidSubscription, match="p256dh"):
        Subscription("https://a.example/1", b"\x04" + bytes(64), ua.auth)


def test_load_p256_public_key(ua: UserAgentKeys) -> None:
    assert (
        load_p256_public_key(ua.public_b64).public_numbers()
        == load_p256_public_key(ua.public).public_numbers()
    )
    for bad in ("", "!!", b"\x02" + bytes(32), b"\x04" + bytes(64), 42):
        with pytest.raises(InvalidKeyError):
            load_p256_public_key(bad)  # type: ignore[arg-type]


ENDPOINTS = [
    "https://push.example.net/wpush/v2/a",
    "https://push.example.net/wpush/v2/with space",
    "https://push.example.net/wpush/v2/tab\there",
    "https://push.example.net/wpush/v2/new\nline",
    "https://push.example.net/wpush/v2/ünïcode",
    "https://push.example.net/wpush/v2/a?q=1#f",
    "https://push.example.net?x=/y",
    "https://push.example.net#/y",
    "https://push.example.net",
    "HTTPS://PUSH.example.net/upper",
    "https://push.example.net:443/port",
    "https://push.example.net:99999/port",
    "https://push.example.net:x/port",
    "https://[::1]:8443/v6",
    "https://[::1/broken",
    "http://user@push.example.net/u",
    "ftp://push.example.net/x",
    "https:///nohost/x",
    "https:/push.example.net//x/y",
    " https://push.example.net/leading-space",
    "\x01https://push.example.net/leading-control",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_endpoint_shortcut_decides_like_the_full_check(endpoint: str) -> None:
    """Origins seen valid skip urlsplit; every endpoint must still be judged the same."""
    from tidings.webpush import subscription as module

    def verdict(check: Any, value: str) -> str:
        try:
            return check(value)  # type: ignore[no-any-return]
        except InvalidSubscription as exc:
            return f"refused: {exc}"

    expected = verdict(module._check_endpoint_fully, endpoint)
    for valid in ENDPOINTS:  # warm the shortcut with every origin that is valid
        verdict(module._check_endpoint, valid)
    assert verdict(module._check_endpoint, endpoint) == expected
    assert verdict(module._check_endpoint, endpoint) == expected  # and once more, cached


def test_an_invalid_key_is_refused_every_time(ua: UserAgentKeys) -> None:
    """The decoded-key cache keeps only valid points: a bad one is never let through."""
    not_on_curve = b"\x04" + bytes(64)
    for _ in range(3):
        with pytest.raises(InvalidSubscription, match="not a P-256 public key"):
            Subscription("https://a.example/1", not_on_curve, ua.auth)
        with pytest.raises(InvalidKeyError, match="not a point on the curve"):
            load_p256_public_key(not_on_curve)
    good = Subscription("https://a.example/1", ua.public, ua.auth)
    assert good.public_key.public_numbers() == load_p256_public_key(ua.public).public_numbers()


@pytest.mark.parametrize("endpoint", [*ENDPOINTS, 42, None, ""])
def test_the_one_step_constructor_judges_like_the_dataclass_one(
    ua: UserAgentKeys, endpoint: Any
) -> None:
    """`Subscription._made` (the fan-out's and from_json's) makes the same objects and
    refuses the same input with the same message, key fields included."""

    def verdict(make: Any, *args: Any) -> object:
        try:
            return make(*args)
        except InvalidSubscription as exc:
            return f"refused: {exc}"

    cases: list[tuple[Any, ...]] = [
        (endpoint, ua.public, ua.auth),
        (endpoint, ua.public, ua.auth, 1700000000),
        (endpoint, ua.public, ua.auth, float("nan")),
        (endpoint, ua.public, ua.auth, True),
        ("https://a.example/1", ua.public[:64], ua.auth),
        ("https://a.example/1", b"\x04" + bytes(64), ua.auth),
        ("https://a.example/1", ua.public, ua.auth[:15]),
        ("https://a.example/1", "text", ua.auth),
    ]
    for args in cases:
        assert verdict(Subscription._made, *args) == verdict(Subscription, *args)


def test_from_json_checks_the_endpoint_once(
    ua: UserAgentKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.webpush import subscription as module

    checked: list[object] = []
    check = module._check_endpoint

    def counting(endpoint: object) -> str:
        checked.append(endpoint)
        return check(endpoint)

    monkeypatch.setattr(module, "_check_endpoint", counting)
    sub = Subscription.from_json(browser_json(ua))
    assert checked == [sub.endpoint]
    assert sub == Subscription(sub.endpoint, ua.public, ua.auth)
