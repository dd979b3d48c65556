"""What a hostile HTTP/2 server can make our clients (sender, user agent, receipt
monitors) hold: each bound here is one the server could otherwise grow without end.
The HPACK table's bound is the service's too, against a hostile client."""

from __future__ import annotations

import asyncio

import h2.connection

# Our HPACK encoder's table, whatever larger SETTINGS_HEADER_TABLE_SIZE the server allows
# (RFC 7541 section 4.2 lets an encoder use less): hpack keeps every header it may reuse
# and searches them linearly, so 2^31 would make each request slower than the last.
MAX_ENCODER_TABLE = 4096
# One response's or pushed response's body: push messages are at most 4 KiB of payload
# (RFC 8030 section 7.2), answers are short JSON; a server sending without end is cut off.
MAX_RESPONSE_BODY = 1 << 20
# Pushed streams promised and not yet complete on one connection; past it, refused.
MAX_OPEN_PROMISES = 1000


def cap_encoder_table(conn: h2.connection.H2Connection) -> None:
    """After the server's SETTINGS: keep our encoder's table within MAX_ENCODER_TABLE
    (the size update goes out at the start of the next header block)."""
    if conn.encoder.header_table_size > MAX_ENCODER_TABLE:
        conn.encoder.header_table_size = MAX_ENCODER_TABLE


# Bytes our client may have queued for a server that does not read: each PING or SETTINGS
# the server sends is answered, so a server flooding them and never reading grew our
# write buffer without end. Past it the connection is dropped.
MAX_UNSENT = 1 << 20


def write_bounded(transport: asyncio.WriteTransport, data: bytes) -> None:
    """Write `data`; abort the connection (its waiters fail in connection_lost) once
    more than MAX_UNSENT bytes wait for the server to read them."""
    transport.write(data)
    if transport.get_write_buffer_size() > MAX_UNSENT:
        transport.abort()
