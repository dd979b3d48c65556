"""The runtime's one HTTP request to the element (http.client), and what a woken
runtime imports: not urllib.request (its import alone costs ~9 ms per push)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from support.ci import free_port
from tidings.hyperty.element_client import ElementUnreachable, element_request


def answering(response: bytes, seen: list[bytes]) -> str:
    """A one-request server on 127.0.0.1 sending `response`; what it read goes to `seen`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with listener, listener.accept()[0] as connection:
            request = connection.recv(65536)
            while b"\r\n\r\n" not in request:  # the head may come in pieces
                request += connection.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(dict(_fields(head)).get(b"content-length", b"0"))
            while len(body) < length:  # and the body after it
                body += connection.recv(65536)
            seen.append(head + b"\r\n\r\n" + body)
            connection.sendall(response)

    threading.Thread(target=answer, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (h.partition(b":") for h in lines)
    ]


def test_a_json_answer() -> None:
    seen: list[bytes] = []
    url = answering(b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"got": 1}\n', seen)
    headers = {"content-type": "application/json", "authorization": "Bearer c"}
    assert element_request("POST", url + "/messages?x=1", b"[1]", headers, 5) == (200, {"got": 1})
    assert seen[0].startswith(b"POST /messages?x=1 HTTP/1.1\r\n")
    assert b"authorization: Bearer c\r\n" in seen[0] and seen[0].endswith(b"\r\n\r\n[1]")


def test_an_error_that_is_not_json() -> None:
    url = answering(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nno!", [])
    assert element_request("GET", url + "/x", None, {}, 5) == (502, {"message": "no!"})


def test_nothing_listening_is_unreachable() -> None:
    with pytest.raises(ElementUnreachable):
        element_request("GET", f"http://127.0.0.1:{free_port()}/status", None, {}, 5)
    with pytest.raises(ElementUnreachable):
        element_request("GET", "ftp://127.0.0.1/status", None, {}, 5)


def test_the_wake_path_does_not_import_urllib_request() -> None:
    code = "import sys, tidings.hyperty.wake; print('urllib.request' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr
