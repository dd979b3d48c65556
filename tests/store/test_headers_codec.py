"""Delivery headers as the stores keep them: compact JSON, cached for the common set."""

from __future__ import annotations

import json

from tidings.service.store import base


def test_headers_round_trip_and_each_decode_is_a_fresh_dict() -> None:
    common = {"encoding": "aes128gcm"}
    text = base.encode_headers(common)
    assert text == '{"encoding":"aes128gcm"}'
    first, second = base.decode_headers(text), base.decode_headers(text)
    assert first == second == common
    first["extra"] = "changed by a caller"
    assert base.decode_headers(text) == common  # the cached copy is not shared


def test_per_message_header_sets_are_encoded_but_not_cached() -> None:
    legacy = {"encoding": "aesgcm", "encryption": "salt=abc", "crypto_key": "dh=xyz"}
    text = base.encode_headers(legacy)
    assert json.loads(text) == legacy
    assert base.decode_headers(text) == legacy
    assert tuple(legacy.items()) not in base._encoded_headers
    assert text not in base._decoded_headers
