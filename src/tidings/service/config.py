"""Service configuration: defaults, a TOML file, `TIDINGS_*` variables, then flags."""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

DAY = 24 * 3600


# Ranges of numeric settings. RFC 8030 section 7.2: a push service MUST accept bodies of
# at least 4096 octets.
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("port", 0, 65535),
    ("max_ttl", 0, 2**31),
    ("max_messages_per_user_agent", 1, 1_000_000),
    ("max_subscriptions_per_user_agent", 1, 1_000_000),
    ("max_monitors_per_user_agent", 1, 100_000),
    ("max_messages_per_subscription", 1, 1_000_000),
    ("max_bytes_per_user_agent", 4096, 1 << 40),
    ("max_stored_messages", 1, 10**12),
    ("user_agent_expiry", 60, 10 * 365 * DAY),
    ("message_status_retention", 1, 365 * DAY),
    ("max_body", 4096, 65536),  # up to the other bodies' cap; a frame stays far below 1 MiB
    ("hello_timeout", 0.01, 3600),
    ("request_timeout", 0.01, 3600),
    ("keepalive_timeout", 0.01, 86400),
    ("tls_handshake_timeout", 0.01, 3600),
    ("expiry_sweep_interval", 0.01, 86400),
    ("workers", 1, 64),
    ("broadcast_poll", 0.1, 3600),
    ("megaphone_poll", 0.1, 86400),
    ("live_ack_wait", 0, 10),
)


FD_RESERVE_SHARE = 10  # a tenth of the open-file limit is kept for other files...
FD_RESERVE_MIN = 256  # ...and at least this many (at most half of a small limit)


def default_max_connections() -> int:
    """Client connections one process may hold: its open-file limit less a reserve.

    The reserve keeps descriptors for what the node opens itself (the SQLite files or the
    PostgreSQL pool, Redis, log files, the event loop, Megaphone and OTLP requests), so
    at the cap it refuses clients instead of failing with EMFILE on its own work.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    reserve = min(max(FD_RESERVE_MIN, soft // FD_RESERVE_SHARE), soft // 2)
    return max(1, soft - reserve)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `tidings serve` can be told; each field is also TIDINGS_<NAME>."""

    host: str = "127.0.0.1"
    port: int = 8080
    db: str = "tidings-data/tidings.db"
    store: str | None = None  # store URL (sqlite:///path, postgresql://...); default: db
    cluster: str | None = None  # cluster bus URL (redis://host:6379/0); default: one node
    node_id: str | None = None  # this node's name in the cluster; default host-pid-random
    public_url: str | None = None  # origin written into endpoints; default http://host:port
    secrets: str | None = None  # token key file; default <db dir>/tidings-secrets.json
    max_ttl: int = 30 * DAY  # longer TTLs are cut to this and the answer says so
    max_messages_per_user_agent: int = 1000  # unexpired stored messages, all channels
    max_subscriptions_per_user_agent: int = 1000
    # Open RFC 8030 monitors (GETs of its subscriptions and sets) of one user agent, and
    # of one receipt subscription: each is a stream the hub offers every message to.
    max_monitors_per_user_agent: int = 32
    max_messages_per_subscription: int = 100  # unexpired stored messages of one channel
    max_bytes_per_user_agent: int = 1 << 20  # bytes of the stored bodies of one user agent
    max_stored_messages: int = 10_000_000  # the whole store; then 507 (docs/operations.md)
    user_agent_expiry: float = 60 * DAY  # user agents not seen for this long are forgotten
    # A signed push's status (GET on its message resource) is kept this long after its
    # final state (acknowledged, expired, deleted, replaced) or its expiry.
    message_status_retention: float = DAY
    # Push body bytes accepted: autopush's default (5630, room for an aesgcm 4 KB payload);
    # RFC 8030 section 7.2 says at least 4096, so that is the lowest allowed.
    max_body: int = 5630
    hello_timeout: float = 10.0  # seconds a new WebSocket has to send `hello`
    request_timeout: float = 30.0  # seconds to send a whole HTTP request (slow clients)
    keepalive_timeout: float = 75.0  # an idle HTTP connection is closed after this
    # Rate limits (limits.py): `N/s`, `N/min` or `N/h`, optionally `burst B`, or `off`.
    rate_push_subscription: str = "600/min"  # pushes to one subscription
    rate_push_vapid_key: str = "5000/s burst 50000"  # pushes signed by one VAPID key
    rate_push_address: str = "5000/s burst 50000"  # pushes from one client address
    rate_connect_address: str = "600/min"  # new WebSocket connections from one address
    rate_subscribe_address: str = "600/min"  # new subscriptions from one address
    rate_limit_exempt: str = "127.0.0.0/8,::1"  # addresses the address rules skip
    rate_limit_buckets: int = 100_000  # buckets kept in memory (least recently used go)
    # Open client connections (all protocols), per process. Per address (IPv6 by /64,
    # rate_limit_exempt and trusted_proxies skipped): a big NAT's browsers fit in 4096,
    # one client cannot take the node's file descriptors. In all: `auto` is the open-file
    # limit less a reserve for the store, cluster, logs and outgoing connections
    # (connection_caps). A number, or `off`, for either.
    max_connections_per_address: str = "4096"
    max_connections: str = "auto"
    # TLS handshakes in progress per address (same keys): each holds a descriptor and
    # TLS state and costs CPU before any request; past it a new one is closed at once.
    max_tls_handshakes_per_address: str = "64"
    # Reverse proxies (comma-separated CIDRs) whose Forwarded / X-Forwarded-For are read.
    trusted_proxies: str = ""
    # Host names the pages, figures and demo answer (DNS rebinding); default: the public
    # URL's host and localhost; IP literals always; `*` for any. Push resources: any.
    allowed_hosts: str = ""
    # A push to a user agent whose WebSocket here acknowledges quickly is written to it
    # first; acknowledged within this many seconds, it is answered without being stored
    # (live_acks.py). 0: every push is stored first.
    live_ack_wait: float = 0.05
    sqlite_synchronous: str = "normal"
    expiry_sweep_interval: float = 60.0
    log_level: str = "info"
    log_format: str = "text"  # text, or json: one JSON object per line (logs.py)
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve HTTPS/WSS
    tls_key: str | None = None
    tls_handshake_timeout: float = 10.0  # seconds for a TLS handshake, then it is closed
    reuse_port: bool = False  # SO_REUSEPORT, for several worker processes on one port
    workers: int = 1  # processes sharing the port (needs a cluster bus to reach each other)
    demo: bool = False  # the /playground page and its demo sender (POST /demo/send)
    dashboard_token: str | None = None  # for /dashboard, /api/stats, /metrics; else local only
    otlp_endpoint: str | None = None  # OpenTelemetry traces over OTLP/HTTP here; off if None
    # Megaphone broadcasts (broadcasts.py): kept in the store and re-read every
    # broadcast_poll seconds (changes made on another node), or read from Mozilla's
    # Megaphone service (`megaphone_url`, its /v1/broadcasts document) every megaphone_poll.
    broadcast_poll: float = 2.0
    megaphone_url: str | None = None
    megaphone_token: str | None = None
    megaphone_poll: float = 30.0

    def __post_init__(self) -> None:
        # A bad value is a configuration error reported at start-up, not a later surprise.
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be a number from {low} to {high}, got {value!r}")
        from tidings.service.limits import parse_networks, rules_from

        rules_from(self.rate_settings)
        parse_networks(self.rate_limit_exempt)
        from tidings.service.forwarded import parse_proxies

        parse_proxies(self.trusted_proxies)
        self.connection_caps()
        self.tls_handshake_cap()

    def connection_caps(self) -> tuple[int | None, int | None]:
        """`max_connections` and `max_connections_per_address` as numbers (None: off)."""
        return self._cap("max_connections"), self._cap("max_connections_per_address")

    def tls_handshake_cap(self) -> int | None:
        """`max_tls_handshakes_per_address` as a number (None: off)."""
        return self._cap("max_tls_handshakes_per_address")

    def _cap(self, name: str) -> int | None:
        """A cap setting: a number (1 or more), `off`, or (`max_connections` only) `auto`."""
        text = str(getattr(self, name)).strip().lower()
        if text in ("off", "none"):
            return None
        if text == "auto" and name == "max_connections":
            return default_max_connections()
        if text.isdigit() and int(text) >= 1:
            return int(text)
        auto = ", auto" if name == "max_connections" else ""
        raise ValueError(f"{name} must be a number (1 or more){auto} or off, got {text!r}")

    @property
    def rate_settings(self) -> dict[str, str]:
        """The `rate_<limit>` settings (rules for limits.py), by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name.startswith("rate_")
            and f.name not in ("rate_limit_exempt", "rate_limit_buckets")
        }

    @functools.cached_property  # every accepted push's Location starts with it
    def origin(self) -> str:
        """The public origin: VAPID `aud` must equal it and endpoints start with it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def websocket_url(self) -> str:
        """The URL a browser puts in `dom.push.serverURL`."""
        origin = self.origin
        scheme = "wss" if origin.startswith("https:") else "ws"
        return scheme + origin[origin.index(":") :] + "/"

    @property
    def store_url(self) -> str:
        """Where messages live: --store if given, else the SQLite file --db."""
        return self.store or self.db

    @property
    def shared_store(self) -> bool:
        """True when other nodes may use the same store (PostgreSQL)."""
        return self.store_url.startswith(("postgresql://", "postgres://"))

    @property
    def secrets_path(self) -> Path:
        """Where the token keys live (next to the database unless told otherwise)."""
        if self.secrets:
            return Path(self.secrets)
        return Path(self.db).parent / "tidings-secrets.json"

    def with_overrides(self, values: dict[str, Any]) -> ServiceConfig:
        """A copy with the given (already typed) non-None values applied."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def _coerce(name: str, raw: object) -> Any:
    """Convert a TOML or environment value to the type of field `name`."""
    if name not in {f.name for f in fields(ServiceConfig)}:
        raise ValueError(f"unknown configuration key {name!r}")
    default = getattr(ServiceConfig, name)
    kind = type(default) if default is not None else str
    if kind is bool and isinstance(raw, str):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    if kind is str and isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)  # a TOML number for a setting that also takes words (`off`)
    if isinstance(raw, str) and kind is not str:
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if kind is float and isinstance(raw, int):
        return float(raw)
    if not isinstance(raw, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}")
    return raw


def load_config(file: Path | None = None, environ: dict[str, str] | None = None) -> ServiceConfig:
    """Defaults, overridden by a TOML file (a `[serve]` table or top level), then env."""
    config = ServiceConfig()
    names = {f.name for f in fields(ServiceConfig)}
    if file is not None:
        data = tomllib.loads(file.read_text())
        table = data.get("serve", data)
        if not isinstance(table, dict):
            raise ValueError("the [serve] table must be a table")
        config = config.with_overrides(
            {k.replace("-", "_"): _coerce(k.replace("-", "_"), v) for k, v in table.items()}
        )
    env = os.environ if environ is None else environ
    from_env = {}
    for name in names:
        value = env.get(f"TIDINGS_{name.upper()}")
        if value is not None and value != "":
            from_env[name] = _coerce(name, value)
    return config.with_overrides(from_env)
