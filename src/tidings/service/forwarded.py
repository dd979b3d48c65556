"""The real client of a request that came through trusted reverse proxies (no I/O).

Behind a reverse proxy every connection comes from the proxy, so the per-address rate
limits and the logs would see one client. A proxy names the client it serves in
`Forwarded` (RFC 7239) or `X-Forwarded-For`; anyone can write those headers, so they
are read only when the peer is a configured trusted proxy, and then with the standard
algorithm: walk the chain of addresses right to left (the rightmost was written by the
proxy nearest to us), skip the addresses of trusted proxies, and take the first one
that is not trusted. What a client wrote further left is never believed.

A header that does not parse (a hop that is not an IP address, `for=unknown`, an
obfuscated name, broken quoting), or `Forwarded` and `X-Forwarded-For` naming different
clients (a proxy that sets one passes the other through from the client), leaves the
request with its peer address: no header can make a request look like it came from
somewhere it cannot prove.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 64  # a longer chain than this is malformed


def parse_networks(text: str, setting: str) -> list[Network]:
    """Comma-separated networks (CIDRs or addresses); ValueError names the bad one."""
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"bad network {part.strip()!r} in {setting}") from None
    return networks


def parse_proxies(text: str) -> list[Network]:
    """The `trusted_proxies` setting as networks."""
    return parse_networks(text, "trusted_proxies")


def peer_address(client: str) -> str:
    """The address of a `Request.client`: `1.2.3.4:5`, `::1:5` (peername), `[::1]:5`."""
    if client.startswith("["):
        end = client.find("]")
        return client[1:end] if end > 0 else client
    if client.count(":") == 1:
        return client.split(":", 1)[0]
    if client.count(":") > 1:
        return client.rsplit(":", 1)[0]
    return client


def parse_ip(text: str) -> Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4), or None if `text` is not one."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _node(text: str) -> Address | None:
    """An address from a hop: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`, `2001:db8::1`."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            return None
        return parse_ip(text[1:end])
    if text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        return parse_ip(host) if port.isdigit() else None
    return parse_ip(text)


def _split_outside_quotes(text: str, separator: str) -> list[str] | None:
    """`text` cut at `separator` except inside quoted strings; None on an open quote."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted or escaped:
        return None
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for char in value[1:-1]:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def forwarded_chain(value: str) -> list[Address] | None:
    """The `for=` addresses of a `Forwarded` header, left to right; None if malformed."""
    elements = _split_outside_quotes(value, ",")
    if elements is None or len(elements) > MAX_HOPS:
        return None
    chain = []
    for element in elements:
        pairs = _split_outside_quotes(element, ";")
        if pairs is None:
            return None
        found: Address | None = None
        for pair in pairs:
            name, equals, raw = pair.partition("=")
            if not equals:
                return None
            if name.strip().lower() == "for":
                if found is not None:
                    return None  # `for` twice in one element
                found = _node(_unquote(raw))
                if found is None:
                    return None  # unknown, obfuscated or not an address
        if found is None:
            return None
        chain.append(found)
    return chain


def x_forwarded_for_chain(value: str) -> list[Address] | None:
    """The addresses of an `X-Forwarded-For` header, left to right; None if malformed."""
    hops = value.split(",")
    if len(hops) > MAX_HOPS:
        return None
    chain = []
    for hop in hops:
        ip = _node(hop)
        if ip is None:
            return None
        chain.append(ip)
    return chain


def _trusted(ip: Address, networks: Sequence[Network]) -> bool:
    return any(ip in network for network in networks)


def _client_of(chain: list[Address], networks: Sequence[Network]) -> Address:
    """Right to left, the first address that is not a trusted proxy's (else the leftmost)."""
    for ip in reversed(chain):
        if not _trusted(ip, networks):
            return ip
    return chain[0]


def format_client(ip: Address) -> str:
    """An address as a `Request.client` (IPv6 in brackets, so no port is guessed)."""
    return f"[{ip}]" if ip.version == 6 else str(ip)


def real_client(client: str, headers: Mapping[str, str], networks: Sequence[Network]) -> str:
    """The client a request comes from: the peer, or whom trusted proxies forwarded.

    `client` is the peer (`Request.client`); headers are lowercase, repeated ones joined
    with ', ' (which is how a list header is read anyway).
    """
    if not networks:
        return client
    forwarded = headers.get("forwarded")
    x_forwarded_for = headers.get("x-forwarded-for")
    if forwarded is None and x_forwarded_for is None:
        return client
    peer = parse_ip(peer_address(client))
    if peer is None or not _trusted(peer, networks):
        return client  # the headers of an untrusted peer are the client's own words
    found: list[Address] = []
    for value, parse in (
        (forwarded, forwarded_chain),
        (x_forwarded_for, x_forwarded_for_chain),
    ):
        if value is None:
            continue
        chain = parse(value)
        if not chain:
            return client  # malformed: the peer is all that is known
        found.append(_client_of(chain, networks))
    if len(set(found)) != 1:
        return client  # the two headers disagree: one of them was written by the client
    return format_client(found[0])
