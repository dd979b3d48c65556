"""A small HTTP/2 client that accepts server push, for RFC 8030's monitors.

httpx does not take server pushes; the user agent (monitoring subscriptions) and the
sender (monitoring receipts) both need them, so they share this client on `h2`.
"""

from tidings.http2.client import H2Client, H2Error, H2Response, H2Stream, PushedResponse

__all__ = ["H2Client", "H2Error", "H2Response", "H2Stream", "PushedResponse"]
