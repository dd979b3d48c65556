"""The HTTP/1.1 answer reader of the pool's connections, fed bytes directly (no socket):
the same answer whether it arrives in one read or byte by byte, and bounded."""

from __future__ import annotations

import asyncio

import pytest

from tidings.sender.transport import Response, TransportError
from tidings.sender.transport.base import MAX_HEAD
from tidings.sender.transport.http1 import H1Connection

ANSWER = (
    b"HTTP/1.1 201 Created\r\nLocation: /m/1\r\nTTL: 60\r\n"
    b"Link: <a>\r\nlink: <b>\r\nContent-Length: 5\r\n\r\nhello"
)


class _Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


async def _exchange(reads: list[bytes]) -> tuple[H1Connection, Response | BaseException]:
    conn = H1Connection()
    conn.connection_made(_Wire())
    pending = asyncio.ensure_future(conn.request(b"POST / HTTP/1.1\r\n\r\n", b""))
    await asyncio.sleep(0)  # the request is written, its waiter set
    for data in reads:
        conn.data_received(data)
    try:
        return conn, await pending
    except (TransportError, TimeoutError) as exc:
        return conn, exc


async def test_one_read_and_byte_by_byte_give_the_same_answer() -> None:
    whole_conn, whole = await _exchange([ANSWER])
    split_conn, split = await _exchange([ANSWER[i : i + 1] for i in range(len(ANSWER))])
    assert whole == split
    assert isinstance(whole, Response)
    assert (whole.status, whole.body, whole.http_version) == (201, b"hello", "HTTP/1.1")
    assert whole.headers == {
        "location": "/m/1",
        "ttl": "60",
        "link": "<a>, <b>",
        "content-length": "5",
    }
    assert whole_conn.reusable and split_conn.reusable


async def test_an_interim_answer_in_the_same_read_is_skipped() -> None:
    _, answer = await _exchange([b"HTTP/1.1 100 Continue\r\n\r\n" + ANSWER])
    assert isinstance(answer, Response) and answer.status == 201 and answer.body == b"hello"


async def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    conn, answer = await _exchange([ANSWER + b"HTTP/1.1 200 OK\r\n"])
    assert isinstance(answer, Response) and answer.status == 201
    assert not conn.reusable


async def test_connection_close_and_http_1_0_are_not_reused() -> None:
    conn, _ = await _exchange(
        [b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"]
    )
    assert not conn.reusable
    conn, _ = await _exchange([b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n"])
    assert not conn.reusable


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2x1 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: lots\r\n\r\n",
    ],
)
async def test_malformed_heads_fail_the_request(answer: bytes) -> None:
    conn, error = await _exchange([answer])
    assert isinstance(error, TransportError) and "malformed" in str(error)
    assert conn.closed and not error.safe_to_retry


async def test_a_head_over_the_limit_is_refused_even_in_one_read() -> None:
    filler = b"X-Filler: " + b"a" * MAX_HEAD + b"\r\n"
    conn, error = await _exchange(
        [b"HTTP/1.1 201 Created\r\n" + filler + b"Content-Length: 0\r\n\r\n"]
    )
    assert isinstance(error, TransportError) and "too long" in str(error)
    assert conn.closed
