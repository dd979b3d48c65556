"""The OpenAPI 3.1 description of the service's HTTP API, served at `/openapi.json`.

It covers what application servers and RFC 8030 user agents call: push, message status, cancel,
subscribe, monitor (HTTP/2 only), unsubscribe, receipts, health. Every refusal is the
JSON error document of errors.py; the status codes listed for each operation are all
the service can answer there (a schemathesis run in the tests holds it to that).
"""

from __future__ import annotations

from typing import Any

from tidings import __version__
from tidings.webpush import MAX_TTL, URGENCIES
from tidings.webpush.errors import Errno

_ERROR = {"$ref": "#/components/responses/Error"}
_LIMITED = {"$ref": "#/components/responses/RateLimited"}
_UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}


def _token(description: str) -> dict[str, Any]:
    return {
        "name": "token",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 512},
    }


def _header(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": schema, **extra}


def _error_response(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """A JSON error answer (the Error schema), with a Retry-After header when it has one."""
    response: dict[str, Any] = {"description": description}
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
        }
    response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    answers: dict[str, Any] = {str(status): _ERROR for status in statuses}
    answers["429"] = _LIMITED
    answers["503"] = _UNAVAILABLE
    return answers


_PUSH_HEADERS = [
    _header(
        "TTL",
        "Seconds the service may keep the message (RFC 8030 section 5.2); longer than "
        "max_ttl is cut and the answer's TTL says so; 0 delivers only to a connected agent.",
        {"type": "integer", "minimum": 0, "maximum": MAX_TTL},
        required=True,
    ),
    _header(
        "Urgency",
        "RFC 8030 section 5.3.",
        {"type": "string", "enum": list(URGENCIES)},
    ),
    _header(
        "Topic",
        "Replaces a stored message of the same subscription and topic (section 5.4).",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
    ),
    _header(
        "Content-Encoding",
        "aes128gcm (RFC 8291) or the legacy aesgcm; required with a body.",
        {"type": "string", "enum": ["aes128gcm", "aesgcm"]},
    ),
    _header("Encryption", "aesgcm only: salt=...", {"type": "string"}),
    _header("Crypto-Key", "aesgcm: dh=...; legacy VAPID: p256ecdsa=...", {"type": "string"}),
    _header(
        "Authorization",
        "VAPID (RFC 8292): `vapid t=<JWT>, k=<key>`, or the legacy `WebPush <JWT>`. "
        "Required for subscriptions restricted to an application server key.",
        {"type": "string"},
    ),
    _header("Prefer", "`respond-async` asks for a delivery receipt.", {"type": "string"}),
    _header(
        "Link",
        'A receipt subscription to reuse: `<url>; rel="urn:ietf:params:push:receipt"`.',
        {"type": "string"},
    ),
]


def _monitor(summary: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description
        + " Needs HTTP/2: messages arrive as server pushes (PUSH_PROMISE) while the "
        f"request stays open; over HTTP/1.1 the answer is 400 (errno {Errno.NEEDS_HTTP2:d}).",
        "parameters": [
            _header(
                "Prefer", "`wait=0`: push what is stored, then answer 204.", {"type": "string"}
            ),
            _header(
                "Urgency",
                "The lowest urgency wanted now.",
                {"type": "string", "enum": list(URGENCIES)},
            ),
        ],
        "responses": {"204": {"description": "Prefer: wait=0 and all was pushed."}}
        | _errors(400, 404),
    }


def _delete(summary: str, description: str, accepted: bool = False) -> dict[str, Any]:
    responses = {"204": {"description": "Deleted."}} | _errors(404)
    responses |= {"202": {"description": "Deleted; see above."}} if accepted else {}
    return {"summary": summary, "description": description, "responses": responses}


_BROADCAST_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A broadcast id, e.g. remote-settings/monitor_changes (/ may be %2F).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:/-]*$", "maxLength": 128},
}
_BROADCAST = {
    "description": "The broadcast.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Broadcast"}}},
}
_ADMIN = "Needs the dashboard token (`Authorization: Bearer`); 403 when the service has none."


def _broadcast_paths() -> dict[str, Any]:
    """The operator's Megaphone broadcast API (web/admin.py)."""
    auth: list[dict[str, list[str]]] = [{"dashboardToken": []}]
    return {
        "/api/broadcasts": {
            "get": {
                "summary": "Every broadcast",
                "description": _ADMIN,
                "security": auth,
                "responses": {
                    "200": {
                        "description": "{id: version}",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Broadcasts"}
                            }
                        },
                    }
                }
                | _errors(401, 403),
            }
        },
        "/api/broadcasts/{id}": {
            "parameters": [_BROADCAST_ID],
            "get": {
                "summary": "One broadcast",
                "description": _ADMIN,
                "security": auth,
                "responses": {"200": _BROADCAST} | _errors(400, 401, 403, 404),
            },
            "put": {
                "summary": "Create a broadcast or change its version",
                "description": _ADMIN + " Connected clients following the id are told at "
                "once (other nodes within broadcast_poll seconds). 409 when the service "
                "already keeps its maximum number of broadcasts "
                f"(errno {Errno.TOO_MANY_BROADCASTS:d}) or reads them from Megaphone "
                f"({Errno.BROADCASTS_READ_ONLY:d}).",
                "security": auth,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["version"],
                                "properties": {
                                    "version": {
                                        "type": "string",
                                        "pattern": "^[ -~]+$",
                                        "maxLength": 256,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {"200": _BROADCAST} | _errors(400, 401, 403, 409),
            },
            "delete": {
                "summary": "Remove a broadcast",
                "description": _ADMIN,
                "security": auth,
                "responses": {"204": {"description": "Deleted."}}
                | _errors(400, 401, 403, 404, 409),
            },
        },
    }


def openapi_document(origin: str, *, max_body: int = 4096) -> dict[str, Any]:
    """The OpenAPI document for a service whose public origin is `origin`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings push service",
            "version": __version__,
            "description": "The Web Push protocol (RFC 8030) with VAPID (RFC 8292). Every "
            "refused request gets a JSON error document with a stable errno; see "
            "docs/protocol-errors.md. Browsers speak Firefox's WebSocket protocol on `/`.",
        },
        "servers": [{"url": origin}],
        "paths": {
            "/push/{token}": {
                "parameters": [_token("The push resource token of a subscription.")],
                "post": {
                    "summary": "Push a message (RFC 8030 section 5)",
                    "operationId": "push",
                    "parameters": _PUSH_HEADERS,
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "maxLength": max_body,
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Accepted (and stored unless TTL 0).",
                            "headers": {
                                "Location": {"$ref": "#/components/headers/MessageLocation"},
                                "TTL": {"$ref": "#/components/headers/TTL"},
                            },
                        },
                        "202": {
                            "description": "Accepted; a delivery receipt will follow.",
                            "headers": {
                                "Location": {"$ref": "#/components/headers/MessageLocation"},
                                "TTL": {"$ref": "#/components/headers/TTL"},
                                "Link": {
                                    "description": "The receipt subscription.",
                                    "schema": {"type": "string"},
                                },
                            },
                        },
                    }
                    | _errors(400, 401, 403, 404, 410, 413)
                    | {"507": {"$ref": "#/components/responses/StoreFull"}},
                },
            },
            "/m/{token}": {
                "parameters": [_token("A push message resource token (Location of a push).")],
                "get": {
                    "summary": "The status of a VAPID-signed push, for its sender",
                    "operationId": "messageStatus",
                    "description": "Needs `Authorization: vapid t=..., k=...` signed by the "
                    "key that signed the push (the same checks as a push): 401 without it "
                    f"(errno {Errno.VAPID_MISSING:d}; unsigned pushes have no status), 403 "
                    "with another key's or an invalid token "
                    f"({Errno.VAPID_KEY_MISMATCH:d}, {Errno.VAPID_INVALID:d}), "
                    "404 once forgotten, message_status_retention "
                    "after the status ended (docs/rfc8030.md, Message status).",
                    "parameters": [
                        _header("Authorization", "A VAPID token (RFC 8292).", {"type": "string"})
                    ],
                    "responses": {
                        "200": {
                            "description": "The message's status; times in epoch seconds.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/MessageStatus"}
                                }
                            },
                        }
                    }
                    | _errors(401, 403, 404),
                },
                "delete": _delete(
                    "Cancel or acknowledge a message (RFC 8030 sections 5.3, 6.2)",
                    "By the application server: cancel before delivery; by the user agent: "
                    "acknowledge. Gone either way; 202: the cluster node holding the user "
                    "agent could not be told, a copy it holds may still be delivered.",
                    accepted=True,
                ),
            },
            "/subscribe": {
                "post": {
                    "summary": "Subscribe (RFC 8030 section 4)",
                    "operationId": "subscribe",
                    "parameters": [
                        _header(
                            "Link",
                            'A set to join: `<set url>; rel="urn:ietf:params:push:set"`.',
                            {"type": "string"},
                        )
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/webpush-options+json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "vapid": {
                                            "type": "string",
                                            "description": "Application server key "
                                            "(base64url uncompressed P-256 point).",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Created: Location is the subscription, Link the "
                            "push resource and the set.",
                            "headers": {
                                "Location": {
                                    "description": "The push message subscription.",
                                    "schema": {"type": "string"},
                                },
                                "Link": {
                                    "description": "rel urn:ietf:params:push and "
                                    "urn:ietf:params:push:set.",
                                    "schema": {"type": "string"},
                                },
                            },
                        }
                    }
                    | _errors(400, 415),
                },
            },
            "/s/{token}": {
                "parameters": [_token("A push message subscription token.")],
                "get": _monitor(
                    "Receive messages (RFC 8030 section 6)", "Monitor one subscription."
                ),
                "delete": _delete("Unsubscribe", "Later pushes to its push resource get 410."),
            },
            "/set/{token}": {
                "parameters": [_token("A subscription set token.")],
                "get": _monitor(
                    "Receive messages of a set", "Monitor every subscription of the set."
                ),
                "delete": _delete("Remove a set", "Every subscription in it is removed."),
            },
            "/r/{token}": {
                "parameters": [_token("A receipt subscription token.")],
                "get": _monitor(
                    "Receive delivery receipts (RFC 8030 section 6.3)",
                    "Receipts arrive as server pushes: 204 delivered, 410 expired.",
                ),
                "delete": _delete(
                    "Remove a receipt subscription",
                    "Its waiting receipts are dropped; later pushes naming it get 400.",
                ),
            },
            "/health": {
                "get": {
                    "summary": "Liveness and store status",
                    "operationId": "health",
                    "responses": {
                        "200": {"$ref": "#/components/responses/Health"},
                        "503": {"$ref": "#/components/responses/Health"},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        }
        | _broadcast_paths(),
        "components": {
            "securitySchemes": {"dashboardToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Broadcasts": {
                    "type": "object",
                    "required": ["broadcasts"],
                    "properties": {
                        "broadcasts": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "Broadcast": {
                    "type": "object",
                    "required": ["id", "version"],
                    "properties": {"id": {"type": "string"}, "version": {"type": "string"}},
                },
                "Error": {
                    "type": "object",
                    "required": ["code", "errno", "error", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "integer", "description": "The HTTP status."},
                        "errno": {"type": "integer", "description": "Stable error number."},
                        "error": {"type": "string", "description": "The status phrase."},
                        "message": {"type": "string", "description": "What to fix."},
                    },
                },
                "MessageStatus": {
                    "type": "object",
                    "required": ["message", "state", "created_at", "ttl", "expires_at"],
                    "properties": {
                        "message": {"type": "string", "description": "The message id."},
                        "state": {
                            "enum": [
                                "stored",
                                "delivered",
                                "acknowledged",
                                "expired",
                                "deleted",
                                "replaced",
                            ]
                        },
                        "delivered_via": {"enum": ["websocket", "http2", None]},
                        "ttl": {"type": "integer"},
                        "created_at": {"type": "number"},
                        "expires_at": {"type": "number"},
                        **{
                            name: {"type": ["number", "null"]}
                            for name in (
                                "stored_at",
                                "delivered_at",
                                "acknowledged_at",
                                "expired_at",
                                "deleted_at",
                                "replaced_at",
                            )
                        },
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "version", "store"],
                    "properties": {
                        "status": {"enum": ["ok", "degraded", "unavailable", "starting"]},
                        "version": {"type": "string"},
                        "store": {"enum": ["ok", "unavailable"]},
                        "connections": {"type": "integer"},
                        "draining": {"type": "boolean"},
                        "ready": {"type": "boolean"},
                        "cluster": {},
                        "uptime": {"type": "number"},
                    },
                },
            },
            "headers": {
                "MessageLocation": {
                    "description": "The push message resource (/m/<token>).",
                    "schema": {"type": "string"},
                },
                "TTL": {"description": "The TTL kept.", "schema": {"type": "string"}},
            },
            "responses": {
                "Error": _error_response("Refused; see errno."),
                "RateLimited": _error_response(
                    f"Rate limited (errno {Errno.RATE_LIMITED:d}) or too many stored "
                    "messages, stored bytes or subscriptions "
                    f"({Errno.TOO_MANY_MESSAGES:d}, {Errno.TOO_MANY_BYTES:d}, "
                    f"{Errno.TOO_MANY_SUBSCRIPTIONS:d}).",
                    retry_after=True,
                ),
                "StoreFull": _error_response(
                    "The whole store holds max_stored_messages "
                    f"(errno {Errno.STORE_FULL:d}); nothing was stored and nothing evicted.",
                    retry_after=True,
                ),
                "Unavailable": _error_response(
                    "The store cannot take writes (disk full, read-only, "
                    "unreachable); nothing was stored.",
                    retry_after=True,
                ),
                "Health": {
                    "description": "Status document.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                    },
                },
            },
        },
    }
