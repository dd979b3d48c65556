"""HTTP/1.1 framing a black-box attacker tries: what a chunked body's trailer section
may carry (RFC 9110 section 6.5: trailer fields are not header fields)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
from hostile_clients import read_http, send_http

from support.service import running_service
from tidings.service.errors import Errno
from tidings.service.http.h1 import MAX_HEADER_BYTES


def chunked(path: str, head: list[str], trailer: list[str]) -> bytes:
    """A POST with an empty chunked body whose trailer section holds `trailer`."""
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "transfer-encoding: chunked", *head]
    fields = "".join(f"{field}\r\n" for field in trailer)
    return ("\r\n".join(lines) + "\r\n\r\n0\r\n" + fields + "\r\n").encode()


async def _endpoint(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(url + "/subscribe", json={})
    assert answer.status_code == 201
    return answer.links["urn:ietf:params:push"]["url"].removeprefix(url)


async def test_a_header_sent_in_the_trailer_is_not_a_header(tmp_path: Path) -> None:
    """A TTL only in the trailer is still a push without a TTL (400), and a TTL in the
    trailer cannot contradict the head's: trailers are never merged into headers."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        push = await _endpoint(running.url)
        missing = await send_http(port, chunked(push, [], ["ttl: 60"]))
        assert missing.status == 400, missing
        assert missing.json()["errno"] == Errno.BAD_TTL
        assert "missing" in str(missing.json()["message"])
        both = await send_http(port, chunked(push, ["ttl: 60"], ["ttl: 60"]))
        assert both.status == 201, both


async def test_a_trailer_cannot_name_another_client_behind_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    """A proxy that passes a chunked body through (trailer included) names the client in
    the head; a hop the client appends in the trailer would otherwise be the rightmost,
    and each push would get a fresh address bucket."""
    limited = {"rate_limit_exempt": "", "rate_push_address": "2/min"}
    async with running_service(tmp_path, trusted_proxies="127.0.0.1/32", **limited) as running:
        statuses = []
        for spoofed in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            answer = await send_http(
                running.config.port,
                chunked(
                    "/push/nothing",
                    ["ttl: 0", "x-forwarded-for: 203.0.113.1"],
                    [f"x-forwarded-for: {spoofed}"],
                ),
            )
            statuses.append(answer.status)
    assert statuses == [404, 404, 429]


async def test_trailers_still_count_against_the_head_limit(tmp_path: Path) -> None:
    async with running_service(tmp_path) as running:
        push = await _endpoint(running.url)
        trailer = [f"x-pad-{i}: {'a' * 1000}" for i in range(20)]
        answer = await send_http(running.config.port, chunked(push, ["ttl: 60"], trailer))
    assert answer.status == 431, answer


async def test_a_head_of_many_short_fields_is_held_to_16_kib_on_the_wire(
    tmp_path: Path,
) -> None:
    """The head limit counted names and values only: 16,000 empty `a:` fields, 64 KB
    on the wire, passed as 16 KB, and merging them into one value copied it 16,000 times
    (about 50 ms of the event loop per request). Each field now also counts its `: `
    and CRLF, so the wire size is what is held to MAX_HEADER_BYTES."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        fields = "a:\r\n" * (MAX_HEADER_BYTES // 4 + 1)  # just over the limit on the wire
        head = f"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n{fields}\r\n".encode()
        over = await send_http(port, head)
        assert over.status == 431, over
        assert over.json()["code"] == 431
        fields = "a:\r\n" * (MAX_HEADER_BYTES // 5 - 20)  # 5 bytes each, and the rest
        head = f"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n{fields}\r\n".encode()
        under = await send_http(port, head)
        assert under.status == 200, under


async def test_an_http11_request_without_one_host_is_400(tmp_path: Path) -> None:
    """RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without a
    Host field, or with more than one (both were served, the two merged as "a, b", a
    value that names no host). HTTP/1.0 may leave it out."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        for head in (
            b"GET /health HTTP/1.1\r\n\r\n",
            b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nhost: example.com\r\n\r\n",
            b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nHOST: 127.0.0.1\r\n\r\n",
        ):
            answer = await send_http(port, head)
            assert answer.status == 400, (head, answer)
            assert answer.json()["errno"] == Errno.MALFORMED_REQUEST
        assert (await send_http(port, b"GET /health HTTP/1.0\r\n\r\n")).status == 200


async def test_other_major_versions_are_505(tmp_path: Path) -> None:
    """HTTP/3.0 and HTTP/9.9 were refused by llhttp's request-line reader, answered as a
    generic 400: they are well-formed request lines naming an unserved version."""
    async with running_service(tmp_path) as running:
        for version in (b"HTTP/3.0", b"HTTP/9.9"):
            head = b"GET /health " + version + b"\r\nhost: 127.0.0.1\r\n\r\n"
            status, errno, after = await _answer_then_eof(running.config.port, head)
            assert (status, after) == (505, "eof"), version
            assert errno == Errno.MALFORMED_REQUEST
        one = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        assert (await send_http(running.config.port, one)).status == 200


async def _raw_answers(port: int, data: bytes, count: int) -> list[bytes]:
    """The raw heads of the first `count` answers to `data`, then b"eof" if the
    connection closed after them, or the head answering a further request if it stayed
    open."""
    probe = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        heads = [await _raw_answer(reader) for _ in range(count)]
        if not reader.at_eof():
            with contextlib.suppress(OSError):
                writer.write(probe)
        heads.append(await _raw_answer(reader))
        return heads
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _raw_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer's head as sent (status line and fields), its body read past; b"eof"."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return b"eof"  # a reset: the probe reached a connection already closed
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 15)
    return head


async def test_a_higher_http1_minor_is_served_as_http11(tmp_path: Path) -> None:
    """RFC 9110 section 2.5: a server implementing HTTP/1.1 serves `HTTP/1.2` (any
    1.x above 1) as HTTP/1.1 and answers in HTTP/1.1. llhttp refused those request lines
    and they were answered 505. Keep-alive is 1.1's, so a pipelined request follows."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        for version in (b"HTTP/1.2", b"HTTP/1.9"):
            first = b"GET /health " + version + b"\r\nhost: 127.0.0.1\r\n\r\n"
            second = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
            for pair in (first + second, second + first):
                one, two, after = await _raw_answers(port, pair, 2)
                assert one.startswith(b"HTTP/1.1 200 "), (version, one)
                assert two.startswith(b"HTTP/1.1 200 "), (version, two)
                assert b"connection: close" not in one + two
                assert after.startswith(b"HTTP/1.1 200 "), after  # kept open
        closing = b"GET /health HTTP/1.2\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        one, after = await _raw_answers(port, closing, 1)
        assert one.startswith(b"HTTP/1.1 200 ") and after == b"eof", one


async def test_a_higher_http1_minor_keeps_http11_framing(tmp_path: Path) -> None:
    """HTTP/1.2 is held to HTTP/1.1's rules, so that a proxy in front and this server
    frame it alike: one Host is required, a chunked body is read as chunked (the
    request pipelined behind it is answered, not smuggled), and Content-Length beside
    Transfer-Encoding is still refused."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        push = await _endpoint(running.url)
        body = chunked(push, ["ttl: 60"], []).replace(b" HTTP/1.1\r\n", b" HTTP/1.2\r\n", 1)
        assert b" HTTP/1.2\r\n" in body
        follow = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        one, two, after = await _raw_answers(port, body + follow, 2)
        assert one.startswith(b"HTTP/1.1 201 "), one
        assert two.startswith(b"HTTP/1.1 200 ") and after.startswith(b"HTTP/1.1 200 "), two
        for head in (
            b"GET /health HTTP/1.2\r\n\r\n",
            f"POST {push} HTTP/1.2\r\nhost: 127.0.0.1\r\nttl: 60\r\n".encode()
            + b"transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        ):
            status, errno, after_bad = await _answer_then_eof(port, head)
            assert (status, after_bad) == (400, "eof"), head
            assert errno == Errno.MALFORMED_REQUEST


async def test_malformed_versions_are_400(tmp_path: Path) -> None:
    """RFC 9112 section 2.3: HTTP-version is `HTTP/` DIGIT "." DIGIT, so a request
    line with `HTTP/1.`, `HTTP/1.22`, `HTTP/1.22x` or `HTTP/10.1` is malformed: 400, not
    505 (`HTTP/1.22` was a 505: llhttp checked the version before the line's end)."""
    async with running_service(tmp_path) as running:
        for version in (b"HTTP/1.", b"HTTP/1.22", b"HTTP/1.22x", b"HTTP/10.1", b"HTTP/1.x"):
            head = b"GET /health " + version + b"\r\nhost: 127.0.0.1\r\n\r\n"
            status, errno, after = await _answer_then_eof(running.config.port, head)
            assert (status, after) == (400, "eof"), version
            assert errno == Errno.MALFORMED_REQUEST


async def _answer_then_eof(port: int, data: bytes) -> tuple[int | None, object, str]:
    """The status and JSON errno of the first answer, and what the connection did next
    (a valid request pipelined behind the bad one must not be answered)."""
    follow = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data + follow)
        first = await read_http(reader)
        after = await read_http(reader)
        return first.status, first.json()["errno"], after.kind
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_only_http_1x_is_spoken_on_the_http1_port(tmp_path: Path) -> None:
    """llhttp read `HTTP/2.0` and `HTTP/0.9` request lines as versions and they were
    served as HTTP/1.1: RFC 9110 section 15.6.6's 505, then the connection closes."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        for version in (b"HTTP/2.0", b"HTTP/0.9"):
            head = b"GET /health " + version + b"\r\nhost: 127.0.0.1\r\n\r\n"
            status, errno, after = await _answer_then_eof(port, head)
            assert (status, after) == (505, "eof"), version
            assert errno == Errno.MALFORMED_REQUEST
        assert (await send_http(port, b"GET /health HTTP/1.0\r\n\r\n")).status == 200


async def test_transfer_codings_a_proxy_may_read_otherwise_are_refused(
    tmp_path: Path,
) -> None:
    """RFC 9112 section 6.1: only chunked is implemented, so any other coding is a 501
    (llhttp passed `identity, chunked` and `gzip, chunked` as a plain chunked body,
    which a proxy in front may frame differently: request smuggling), and an HTTP/1.0
    request with Transfer-Encoding has faulty framing: 400; both close the connection."""
    async with running_service(tmp_path) as running:
        port = running.config.port
        push = await _endpoint(running.url)
        for coding, version, expected in (
            ("identity, chunked", "HTTP/1.1", 501),
            ("gzip, chunked", "HTTP/1.1", 501),
            ("chunked", "HTTP/1.0", 400),
        ):
            head = f"POST {push} {version}\r\nhost: 127.0.0.1\r\nttl: 60\r\n"
            head += f"transfer-encoding: {coding}\r\n\r\n0\r\n\r\n"
            status, errno, after = await _answer_then_eof(port, head.encode())
            assert (status, after) == (expected, "eof"), (coding, version)
            assert errno == Errno.MALFORMED_REQUEST
        plain = await send_http(port, chunked(push, ["ttl: 60"], []))
        assert plain.status == 201, plain


async def test_transfer_encoding_without_one_final_chunked_is_400(tmp_path: Path) -> None:
    """RFC 9112 section 6.3: a request whose last coding is not chunked has no reliable
    length: 400 and close, whatever its codings (`gzip` alone was a 501, the "not
    implemented" check coming first). `chunked` twice (one field or two) and
    Transfer-Encoding beside Content-Length were already 400 (llhttp): pinned here, for
    smuggling behind a proxy (deploy/nginx) depends on them."""
    async with running_service(tmp_path) as running:
        push = await _endpoint(running.url)
        for fields in (
            "transfer-encoding: gzip\r\n",
            "transfer-encoding: chunked, gzip\r\n",
            "transfer-encoding: chunked, chunked\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
        ):
            head = f"POST {push} HTTP/1.1\r\nhost: 127.0.0.1\r\nttl: 60\r\n{fields}\r\n"
            status, errno, after = await _answer_then_eof(
                running.config.port, (head + "0\r\n\r\n").encode()
            )
            assert (status, after) == (400, "eof"), fields
            assert errno == Errno.MALFORMED_REQUEST
