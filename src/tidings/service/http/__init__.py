"""Tidings' own connection server: HTTP/1.1, WebSocket and HTTP/2 on one port.

Why not a general-purpose ASGI server: see docs/server.md. In short, the push service
needs HTTP/2 server push driven by the application (RFC 8030 monitoring) on the same
port as HTTP/1.1 application servers and Firefox's WebSockets, at a cost per idle
connection close to a bare asyncio protocol. Parsing is left to well-kept sans-I/O
libraries (httptools for HTTP/1.1, h2 for HTTP/2); what is written here is the glue.
"""
