"""RFC 8030 TTL, Urgency and Topic parsing, edge case by edge case."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.webpush import HeaderError, Urgency, parse_topic, parse_ttl, parse_urgency


class TestTtl:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0),
            ("60", 60),
            (" 60 ", 60),
            ("\t86400\t", 86400),
            ("007", 7),
            ("000", 0),
            ("2147483647", 2**31 - 1),
            ("2147483648", 2**31),
            ("2147483649", 2**31),
            ("9999999999", 2**31),
            ("9" * 5000, 2**31),  # beyond int()'s digit limit: must still saturate
            ("0" * 5000 + "5", 5),
        ],
    )
    def test_valid(self, value: str, expected: int) -> None:
        assert parse_ttl(value) == expected

    @pytest.mark.parametrize("value", [None, "", "   ", "\t"])
    def test_missing(self, value: str | None) -> None:
        with pytest.raises(HeaderError, match="missing") as info:
            parse_ttl(value)
        assert info.value.header == "TTL"

    @pytest.mark.parametrize(
        "value",
        [
            "+60",
            "-1",
            "-0",
            "6 0",
            "60s",
            "1.5",
            "1e3",
            "0x10",
            "١٢",
            "\uff11\uff12",
            "²",
            "60,60",
            "60, 60",
            "abc",
            "6_0",
            "\u00a060",
        ],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(HeaderError) as info:
            parse_ttl(value)
        assert info.value.header == "TTL"
        assert isinstance(info.value, ValueError)

    def test_several_values_say_so(self) -> None:
        with pytest.raises(HeaderError, match="single"):
            parse_ttl("60, 120")

    @given(st.integers(min_value=0, max_value=10**40))
    def test_any_number(self, n: int) -> None:
        assert parse_ttl(str(n)) == min(n, 2**31)

    @given(st.text(max_size=30))
    def test_any_text_is_int_or_header_error(self, text: str) -> None:
        with contextlib.suppress(HeaderError):
            assert 0 <= parse_ttl(text) <= 2**31


class TestUrgency:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, Urgency.NORMAL),
            ("", Urgency.NORMAL),
            ("  ", Urgency.NORMAL),
            ("very-low", Urgency.VERY_LOW),
            ("low", Urgency.LOW),
            ("normal", Urgency.NORMAL),
            ("high", Urgency.HIGH),
            (" high\t", Urgency.HIGH),
            ("HIGH", Urgency.HIGH),  # ABNF literals are case-insensitive (RFC 5234 §2.3)
            ("Very-Low", Urgency.VERY_LOW),
        ],
    )
    def test_valid(self, value: str | None, expected: Urgency) -> None:
        assert parse_urgency(value) is expected

    @pytest.mark.parametrize(
        "value",
        [
            "urgent",
            "very low",
            "verylow",
            "very_low",
            "hi",
            "high,low",
            "high, high",
            "1",
            "\u210eigh",
            "h\u0131gh",
            "\u00a0high",
            "h\u0456gh",
        ],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(HeaderError) as info:
            parse_urgency(value)
        assert info.value.header == "Urgency"

    def test_several_values_say_so(self) -> None:
        with pytest.raises(HeaderError, match="single"):
            parse_urgency("low, high")

    def test_order_and_admits(self) -> None:
        ranks = [u.rank for u in (Urgency.VERY_LOW, Urgency.LOW, Urgency.NORMAL, Urgency.HIGH)]
        assert ranks == [0, 1, 2, 3]
        assert Urgency.NORMAL.admits(Urgency.HIGH)
        assert Urgency.NORMAL.admits(Urgency.NORMAL)
        assert not Urgency.NORMAL.admits(Urgency.LOW)
        assert Urgency.VERY_LOW.admits(Urgency.VERY_LOW)
        assert all(Urgency.VERY_LOW.admits(u) for u in Urgency)
        assert [u for u in Urgency if Urgency.HIGH.admits(u)] == [Urgency.HIGH]

    def test_is_a_string(self) -> None:
        assert Urgency.VERY_LOW == "very-low"
        assert str(Urgency.HIGH) == "high"
        assert f"{Urgency.LOW}" == "low"


class TestTopic:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, None),
            ("a", "a"),
            ("upd_ate-1", "upd_ate-1"),
            ("A" * 32, "A" * 32),
            (" news ", "news"),
        ],
    )
    def test_valid(self, value: str | None, expected: str | None) -> None:
        assert parse_topic(value) == expected

    @pytest.mark.parametrize(
        ("value", "match"),
        [
            ("", "empty"),
            ("  ", "empty"),
            ("A" * 33, "33 characters"),
            ("a b", "alphabet"),
            ("a+b", "alphabet"),
            ("a/b", "alphabet"),
            ("abc=", "alphabet"),
            ("é", "alphabet"),
            ("١٢", "alphabet"),
            ("a.b", "alphabet"),
            ("a,b", "single"),
            ("a, a", "single"),
        ],
    )
    def test_invalid(self, value: str, match: str) -> None:
        with pytest.raises(HeaderError, match=match) as info:
            parse_topic(value)
        assert info.value.header == "Topic"

    @given(st.text(max_size=40))
    def test_any_text(self, text: str) -> None:
        try:
            topic = parse_topic(text)
        except HeaderError:
            return
        assert topic is not None and 1 <= len(topic) <= 32 and topic.isascii()
