"""The RFC 8030 transport's plain parts (`useragent/rfc8030_wire.py`): URL forms, Link,
urgency, the headers of a pushed message."""

from __future__ import annotations

import pytest

from tidings.useragent.rfc8030 import (
    REL_PUSH,
    REL_SET,
    check_urgency,
    delivery_headers,
    is_rfc8030_url,
    link_target,
    rfc8030_url,
    subscribe_url,
)


@pytest.mark.parametrize(
    ("given", "url", "subscribe"),
    [
        ("h2c://127.0.0.1:8080", "http://127.0.0.1:8080", "http://127.0.0.1:8080/subscribe"),
        ("h2://push.example/", "https://push.example/", "https://push.example/subscribe"),
        ("https://push.example", "https://push.example", "https://push.example/subscribe"),
        ("ws://127.0.0.1:1/", "http://127.0.0.1:1/", "http://127.0.0.1:1/subscribe"),
        ("wss://push.example", "https://push.example", "https://push.example/subscribe"),
        ("h2://push.example/v1/sub", "https://push.example/v1/sub", "https://push.example/v1/sub"),
    ],
)
def test_url_forms(given: str, url: str, subscribe: str) -> None:
    assert rfc8030_url(given) == url
    assert subscribe_url(given) == subscribe


@pytest.mark.parametrize("bad", ["ftp://x/", "h2c://", "push.example"])
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        rfc8030_url(bad)


def test_which_urls_choose_rfc8030() -> None:
    assert is_rfc8030_url("h2c://host:1") and is_rfc8030_url("H2://host")
    assert not is_rfc8030_url("http://host") and not is_rfc8030_url("ws://host/")


def test_link_target() -> None:
    header = (
        '<https://p.example/push/AB>; rel="urn:ietf:params:push", '
        "<https://p.example/set/CD>; rel=urn:ietf:params:push:set"
    )
    assert link_target(header, REL_PUSH) == "https://p.example/push/AB"
    assert link_target(header, REL_SET) == "https://p.example/set/CD"
    assert link_target(header, "urn:ietf:params:push:receipt") is None
    assert link_target('<x>; rel="other urn:ietf:params:push"', REL_PUSH) == "x"
    assert link_target("", REL_PUSH) is None


def test_urgency_levels() -> None:
    assert check_urgency(None) is None
    assert check_urgency("high") == "high"
    assert check_urgency(" Very-Low ") == "very-low"
    with pytest.raises(ValueError):
        check_urgency("urgent")


def test_delivery_headers_are_named_as_the_decrypter_expects() -> None:
    pushed = {
        "content-encoding": "aesgcm",
        "encryption": "salt=abc",
        "crypto-key": "dh=def",
        "last-modified": "Mon, 30 Nov 2026 16:20:01 GMT",
        "link": f"<x>; rel={REL_PUSH}",
    }
    assert delivery_headers(pushed) == {
        "encoding": "aesgcm",
        "encryption": "salt=abc",
        "crypto_key": "dh=def",
    }
    assert delivery_headers({}) == {}
