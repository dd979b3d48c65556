"""The bus message schema without Redis: what a node sends, the other reads back."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.service.cluster.wire import (
    MAX_BUS_BATCH,
    BadBusMessage,
    Deliver,
    Poke,
    PokeAll,
    Withdrawn,
    decode_bus_message,
    decode_bus_messages,
    encode_message,
    encode_poke,
    encode_poke_all,
    encode_withdrawn,
)
from tidings.service.store import StoredMessage


@pytest.mark.parametrize(
    "message",
    [
        StoredMessage("mid-1", "a" * 32, "0b9e5d1c-5d3e-4c4a-9f0a-1b2c3d4e5f60", b"\x00" * 4096, 0,
                      time.time(), time.time(), "very-low", None, {}, None),
        StoredMessage("mid_2", "b" * 32, "ch", b"x", 2**31, 1.5, 2.5, "high", "T-1",
                      {"encoding": "aesgcm", "encryption": "salt=abc", "crypto_key": "dh=x"},
                      "receipt-7"),
    ],
)  # fmt: skip
def test_every_message_a_node_sends_reads_back_the_same(message: StoredMessage) -> None:
    assert decode_bus_message(encode_message(message).encode()) == Deliver(message)


def test_pokes_read_back() -> None:
    assert decode_bus_message(encode_poke("u1")) == Poke("u1")
    assert decode_bus_message(encode_poke_all()) == PokeAll()


@pytest.mark.parametrize(
    "raw",
    [b'{"t":"p","ua":"u1","ttl":Infinity}', b'{"t":"p","ua":NaN}', b'{"t":"p","ua":"a\\nb"}'],
)
def test_reasons_never_carry_the_payload(raw: bytes) -> None:
    with pytest.raises(BadBusMessage) as caught:
        decode_bus_message(raw)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_to_an_event_or_bad_bus_message(raw: bytes) -> None:
    with contextlib.suppress(BadBusMessage):
        decode_bus_message(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["m", "p", "all"]),
    st.dictionaries(
        st.sampled_from(["id", "ua", "ch", "b", "ttl", "c", "e", "u", "tp", "h", "r"]), _JSON
    ),
)
def test_any_json_fields_decode_or_raise_bad_bus_message(
    kind: str, fields: dict[str, object]
) -> None:
    try:
        event = decode_bus_message(json.dumps({"t": kind, **fields}))
    except BadBusMessage:
        return
    if isinstance(event, Deliver):  # whatever passed is a message a hub can take
        assert isinstance(event.message.ttl, int) and 0 <= event.message.ttl <= 2**31
        assert all(isinstance(v, str) for v in event.message.headers.values())


def test_a_traced_message_carries_its_traceparent_and_nothing_else_passes_for_one() -> None:
    traceparent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    traced = StoredMessage(
        message_id="m" * 56, uaid="u" * 32, channel_id="c" * 36, body=b"x", ttl=60,
        created_at=1.0, expires_at=61.0, traceparent=traceparent,
    )  # fmt: skip
    decoded = decode_bus_message(encode_message(traced))
    assert isinstance(decoded, Deliver) and decoded.message.traceparent == traceparent
    for forged in ("00-xyz", "x" * 55, 7, ["00"]):
        data = json.loads(encode_message(traced))
        data["tr"] = forged
        with pytest.raises(BadBusMessage, match="tr: not a traceparent"):
            decode_bus_message(json.dumps(data))


def test_a_superseded_notice_reads_back_and_its_stamp_is_checked() -> None:
    from tidings.service.cluster.wire import Superseded, encode_superseded

    assert decode_bus_message(encode_superseded("a" * 32, 1_796_000_000_000)) == Superseded(
        "a" * 32, 1_796_000_000_000
    )
    for stamp in (-1, 1.5, "1", 10**20, None):
        with pytest.raises(BadBusMessage, match="st: not a stamp"):
            decode_bus_message(json.dumps({"t": "s", "ua": "a" * 32, "st": stamp}))


def test_a_withdrawal_reads_back_and_its_ids_are_checked() -> None:
    from tidings.service.cluster.wire import Withdrawn, encode_withdrawn

    assert decode_bus_message(encode_withdrawn("a" * 32, "m-1")) == Withdrawn("a" * 32, "m-1")
    for bad in ({"id": "x y"}, {"id": 7}, {"ua": ""}, {"extra": 1}):
        data = {"t": "w", "ua": "a" * 32, "id": "m-1", **bad}
        with pytest.raises(BadBusMessage):
            decode_bus_message(json.dumps(data))


def test_an_array_reads_back_in_order_and_a_bad_member_drops_alone() -> None:
    message = StoredMessage("m1", "u1", "ch", b"hi", 60, 1.0, 61.0)
    members = [encode_message(message), '{"t":"p","ua":"a b"}', encode_withdrawn("u1", "m1")]
    events = decode_bus_messages("[" + ",".join(members) + "]")
    assert events[0] == Deliver(message)
    assert isinstance(events[1], BadBusMessage) and "ua" in str(events[1])
    assert events[2] == Withdrawn("u1", "m1")
    assert decode_bus_messages(encode_poke("u1")) == [Poke("u1")]  # one message as itself
    assert decode_bus_messages("[]") == []
    with pytest.raises(BadBusMessage, match="over"):
        decode_bus_messages("[" + ",".join([encode_poke_all()] * (MAX_BUS_BATCH + 1)) + "]")
    with pytest.raises(BadBusMessage, match="not an object"):
        decode_bus_message("[" + encode_poke_all() + "]")  # one message is never an array
    assert isinstance(decode_bus_messages("[[]]")[0], BadBusMessage)


def test_a_receipt_notice_reads_back_and_its_fields_are_checked() -> None:
    from tidings.service.cluster.wire import ReceiptsQueued, encode_receipts_queued

    notice = decode_bus_message(encode_receipts_queued("f" * 32, "node-a"))
    assert notice == ReceiptsQueued("f" * 32, "node-a")
    for bad in ({"r": "x y"}, {"r": 7}, {"n": 1}, {"n": "n" * 129}, {"extra": 1}):
        data = {"t": "r", "r": "f" * 32, "n": "node-a", **bad}
        with pytest.raises(BadBusMessage):
            decode_bus_message(json.dumps(data))


def test_a_live_offer_and_its_answers_read_back() -> None:
    from tidings.service.cluster.wire import (
        LiveOffer,
        OfferAnswer,
        encode_offer,
        encode_offer_answer,
    )

    message = StoredMessage("mid-3", "c" * 32, "ch", b"\x01" * 300, 60, 1.5, 61.5, "normal")
    assert decode_bus_message(encode_offer(message, "node-a", 0.05)) == LiveOffer(
        message, "node-a", 0.05
    )
    for offered, code in ((True, 100), (True, 102), (True, None), (False, None)):
        answer = encode_offer_answer("mid-3", offered, code)
        assert decode_bus_message(answer) == OfferAnswer("mid-3", offered, code)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tp": "T"}, "Topic"),  # never offered: stored first, as locally
        ({"r": "receipt-1"}, "receipt"),
        ({"ttl": 0, "e": 1.5}, "TTL 0"),
        ({"w": -1}, "w:"),
        ({"w": 10_001}, "w:"),
        ({"w": 0.5}, "w:"),
        ({"n": 7}, "n:"),
        ({"n": "x" * 129}, "n:"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_a_bad_live_offer_is_refused(change: dict[str, object], reason: str) -> None:
    from tidings.service.cluster.wire import encode_offer

    message = StoredMessage("mid-4", "d" * 32, "ch", b"x", 60, 1.5, 61.5, "normal")
    data = json.loads(encode_offer(message, "node-a", 0.05))
    data.update(change)
    with pytest.raises(BadBusMessage, match=reason):
        decode_bus_message(json.dumps(data))


@pytest.mark.parametrize(
    "raw",
    [
        {"t": "a", "id": "m", "o": 2, "c": None},
        {"t": "a", "id": "m", "o": True, "c": None},
        {"t": "a", "id": "m", "o": 1, "c": "100"},
        {"t": "a", "id": "m", "o": 1, "c": 2**40},
        {"t": "a", "id": "m", "o": 1, "c": 100, "x": 1},
        {"t": "a", "id": "m\n", "o": 1, "c": 100},
    ],
)
def test_a_bad_offer_answer_is_refused(raw: dict[str, object]) -> None:
    with pytest.raises(BadBusMessage):
        decode_bus_message(json.dumps(raw))


def test_an_offer_among_routes_does_not_spoil_them() -> None:
    """An old node drops the kind it does not know; the routes beside it still count."""
    from tidings.service.cluster.wire import encode_offer

    message = StoredMessage("mid-5", "e" * 32, "ch", b"x", 60, 1.5, 61.5, "normal")
    unknown = encode_offer(message, "node-a", 0.05).replace('"t":"o"', '"t":"future"')
    events = decode_bus_messages(f"[{unknown},{encode_message(message)}]")
    assert isinstance(events[0], BadBusMessage) and events[1] == Deliver(message)
