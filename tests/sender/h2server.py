"""A minimal HTTP/2 push service for tests: TLS with ALPN (or cleartext h2c), built on `h2`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.ci import free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class H2Request:
    headers: dict[str, str]
    body: bytes


@dataclass
class H2Service:
    """Answers every POST with 201 (or `status`), records requests and connections."""

    cert: Path | None = None
    key: Path | None = None
    status: int = 201
    alpn: list[str] = field(default_factory=lambda: ["h2", "http/1.1"])
    max_streams: int = 100
    delay: float = 0.0
    port: int = 0
    requests: list[H2Request] = field(default_factory=list)
    connections: int = 0
    max_open_streams: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> H2Service:
        context = None
        if self.cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, self.key)
            context.set_alpn_protocols(self.alpn)
        self.port = free_port()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _H2ServerProtocol(self), "127.0.0.1", self.port, ssl=context
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _H2ServerProtocol(asyncio.Protocol):
    def __init__(self, service: H2Service) -> None:
        self.service = service
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            transport.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        self.service.connections += 1
        self.conn.initiate_connection()
        self.conn.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.service.max_streams}
        )
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                self.service.max_open_streams = max(
                    self.service.max_open_streams, len(self.streams)
                )
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if self.service.delay:
                    asyncio.get_running_loop().call_later(
                        self.service.delay, self._answer, event.stream_id
                    )
                else:
                    self._answer(event.stream_id, flush=False)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int, *, flush: bool = True) -> None:
        headers, body = self.streams.pop(stream_id)
        self.service.requests.append(H2Request(headers, bytes(body)))
        self.conn.send_headers(
            stream_id,
            [
                (":status", str(self.service.status)),
                ("location", f"/m/{stream_id}"),
                ("ttl", "60"),
                ("content-length", "0"),
            ],
            end_stream=True,
        )
        if flush and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())
