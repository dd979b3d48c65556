"""reTHINK addresses: hyperties, runtimes, users, domain elements and data objects.

    hyperty://example.com/9f3c...            a hyperty instance
    hyperty-runtime://example.com/42ab...    a runtime (kept across restarts)
    user://example.com/alice                 a user at an identity provider
    domain://push.example.com                a functional element of the service provider
    connection://example.com/7d1e...         a data object (also comm://, context://, ...)

Pure functions, no I/O: parse, build, and tell the kinds apart.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

__all__ = [
    "ADDRESS_SCHEMES",
    "Address",
    "AddressError",
    "allocation_url",
    "connection_url",
    "hyperty_url",
    "is_data_object",
    "is_hyperty",
    "is_runtime",
    "object_url",
    "parse_address",
    "push_element_url",
    "registry_url",
    "runtime_allocation_url",
    "runtime_registry_url",
    "runtime_url",
    "user_url",
]

#: Schemes that name a party or an element, not a data object.
ADDRESS_SCHEMES = frozenset(
    {
        "hyperty",
        "hyperty-runtime",
        "user",
        "user-guid",
        "domain",
        "domain-idp",
        "global",
        "hyperty-catalogue",
        "http",
        "https",
    }
)

#: Sub-resources of a data object: messages from or to them concern the object itself.
OBJECT_SUFFIXES = ("subscription", "changes", "children")

_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/\s?#]+)(?P<path>/[^\s]*)?")
_AUTHORITY = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=@:-]+")


class AddressError(ValueError):
    """A string that is not a usable reTHINK address; the message says why."""


@dataclass(frozen=True)
class Address:
    """A parsed address: `scheme://domain/path` (path without its leading slash)."""

    scheme: str
    domain: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.domain}" + (f"/{self.path}" if self.path else "")

    @property
    def segments(self) -> tuple[str, ...]:
        """The path split on '/', empty segments dropped."""
        return tuple(part for part in self.path.split("/") if part)


def parse_address(url: str) -> Address:
    """Split `url` into scheme, domain and path; AddressError when it is not `scheme://host/...`."""
    if not isinstance(url, str):
        raise AddressError(f"an address must be a string, got {type(url).__name__}")
    match = _URL.fullmatch(url)
    if match is None:
        raise AddressError(f"{url!r} is not an address of the form scheme://domain/path")
    authority = match["authority"]
    if not _AUTHORITY.fullmatch(authority):
        raise AddressError(f"{url!r} has an unusable domain {authority!r}")
    return Address(match["scheme"], authority, (match["path"] or "").lstrip("/"))


def _identifier(identifier: str | None) -> str:
    if identifier is None:
        return str(uuid.uuid4())
    if not identifier or any(c.isspace() or c in "/?#" for c in identifier):
        raise AddressError(f"{identifier!r} is not a usable identifier (no spaces, '/', '?', '#')")
    return identifier


def _domain(domain: str) -> str:
    if not domain or not _AUTHORITY.fullmatch(domain):
        raise AddressError(f"{domain!r} is not a domain")
    return domain


def hyperty_url(domain: str, identifier: str | None = None) -> str:
    """`hyperty://<domain>/<identifier>`; a fresh UUID when no identifier is given."""
    return f"hyperty://{_domain(domain)}/{_identifier(identifier)}"


def runtime_url(domain: str, identifier: str | None = None) -> str:
    """`hyperty-runtime://<domain>/<identifier>`; a fresh UUID when no identifier is given."""
    return f"hyperty-runtime://{_domain(domain)}/{_identifier(identifier)}"


def runtime_registry_url(runtime: str) -> str:
    """The runtime's registry function, the `from` of its registrations."""
    if not is_runtime(runtime):
        raise AddressError(f"{runtime!r} is not a hyperty-runtime:// address")
    return runtime.rstrip("/") + "/registry"


def push_element_url(domain: str) -> str:
    """`domain://push.<domain>`: the push element of the service provider."""
    return f"domain://push.{_domain(domain)}"


def allocation_url(domain: str) -> str:
    """`domain://msg-node.<domain>/address-allocation`: where runtimes get hyperty addresses."""
    return f"domain://msg-node.{_domain(domain)}/address-allocation"


def runtime_allocation_url(runtime: str) -> str:
    """The runtime's address allocation function, the `from` of its allocation requests."""
    if not is_runtime(runtime):
        raise AddressError(f"{runtime!r} is not a hyperty-runtime:// address")
    return runtime.rstrip("/") + "/address-allocation"


def registry_url(domain: str) -> str:
    """`domain://registry.<domain>`: the service provider's registry."""
    return f"domain://registry.{_domain(domain)}"


def user_url(idp: str, name: str) -> str:
    """`user://<idp>/<name>`."""
    return f"user://{_domain(idp)}/{_identifier(name)}"


def connection_url(domain: str, identifier: str | None = None) -> str:
    """`connection://<domain>/<identifier>`: a Connection data object (a call)."""
    return f"connection://{_domain(domain)}/{_identifier(identifier)}"


def _scheme(url: str) -> str | None:
    try:
        return parse_address(url).scheme
    except AddressError:
        return None


def is_hyperty(url: str) -> bool:
    """True for a `hyperty://domain/id` address."""
    try:
        address = parse_address(url)
    except AddressError:
        return False
    return address.scheme == "hyperty" and bool(address.segments)


def is_runtime(url: str) -> bool:
    """True for a `hyperty-runtime://domain/id` address (with or without a function path)."""
    try:
        address = parse_address(url)
    except AddressError:
        return False
    return address.scheme == "hyperty-runtime" and bool(address.segments)


def is_data_object(url: str) -> bool:
    """True for a data object URL (`connection://`, `comm://`, ...) or one of its sub-resources."""
    scheme = _scheme(url)
    return scheme is not None and scheme not in ADDRESS_SCHEMES


def object_url(url: str) -> str:
    """The data object itself: `connection://d/id/subscription` -> `connection://d/id`.

    Raises AddressError when `url` is not a data object URL.
    """
    address = parse_address(url)
    if address.scheme in ADDRESS_SCHEMES:
        raise AddressError(f"{url!r} is not a data object URL")
    segments = address.segments
    for index, segment in enumerate(segments):
        if index > 0 and segment in OBJECT_SUFFIXES:
            segments = segments[:index]
            break
    return str(Address(address.scheme, address.domain, "/".join(segments)))
