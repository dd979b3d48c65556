"""One HTTP request from a runtime to the push element, with `http.client`.

Not `urllib.request`: a woken runtime imports this on every push, and urllib.request
costs about 9 ms more to import than http.client alone (its redirect, cookie, proxy and
file handlers: tempfile, shutil, ipaddress, email.utils...); the element answers one
request with one response, no redirects. See BENCHMARKS.md, hyperty wake-up.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

__all__ = ["ElementUnreachable", "element_request"]


class ElementUnreachable(OSError):
    """No HTTP answer from the element (refused, reset, timed out, not HTTP)."""


def element_request(
    method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    """(status, parsed JSON body); a body that is not JSON in an error answer becomes
    `{"message": text}`. Blocking: run it on a thread."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout
        )
    elif parts.scheme == "http":
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        raise ElementUnreachable(f"not an http(s) URL: {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ElementUnreachable(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    if response.status < 400:
        return response.status, json.loads(raw or b"null")
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"message": raw.decode(errors="replace")}
