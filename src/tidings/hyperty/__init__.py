"""tidings.hyperty: Web Push towards reTHINK Hyperty runtimes.

- `Message`, `MessageError`, `check_response`: the reTHINK message model (message.py);
- address helpers for `hyperty://`, `hyperty-runtime://`, `user://`, `domain://` and data
  objects (addresses.py);
- `PushElement`: `domain://push.<domain>`, next to the message node: runtime credentials,
  address allocation, registrations, delivery by Web Push, cancel by Topic, answers
  routed back (element.py, http.py); `Mailboxes`: who is connected (mailboxes.py);
  `ElementLimits`, `Refused` (element_limits.py);
- `IdentityVerifier`: identity assertions checked against an IdP's JWKS (identity.py);
  `IdentityProvider`: a test IdP (idp.py);
- `HypertyRuntime`: a runtime that keeps its address, sleeps, and is woken by a push
  (runtime.py, its state in runtime_state.py, its HTTP calls to the element in
  element_client.py, wake.py); `HypertyContext` and factories: what a hyperty sees of
  its runtime (context.py); `Connector`: the call set-up hyperty (connector.py).

See docs/hyperty.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.hyperty.addresses import (
        Address,
        AddressError,
        allocation_url,
        connection_url,
        hyperty_url,
        is_data_object,
        is_hyperty,
        is_runtime,
        object_url,
        parse_address,
        push_element_url,
        registry_url,
        runtime_registry_url,
        runtime_url,
        user_url,
    )
    from tidings.hyperty.context import Hyperty, HypertyContext, HypertyFactory, HypertyRuntimeError
    from tidings.hyperty.element import Delivery, ElementEvent, PushElement
    from tidings.hyperty.element_limits import ElementLimits, Refused
    from tidings.hyperty.identity import IdentityError, IdentityVerifier
    from tidings.hyperty.idp import IdentityProvider
    from tidings.hyperty.mailboxes import Mailboxes
    from tidings.hyperty.message import (
        MESSAGE_TYPES,
        Message,
        MessageError,
        MessageType,
        check_response,
    )
    from tidings.hyperty.rules import (
        DEFAULT_TTL,
        MessageTooLarge,
        PushPlan,
        Registration,
        Route,
        classify,
        is_cancel,
        is_invitation,
        parse_registration,
        plan_push,
        topic_for,
        urgency_for,
    )
    from tidings.hyperty.runtime import HypertyRuntime
    from tidings.hyperty.store import ElementStore

#: Where each public name lives; imported on first use, so that a woken runtime
#: (`python -m tidings.hyperty.wake`) loads only what it needs.
_EXPORTS = {
    "DEFAULT_TTL": "tidings.hyperty.rules",
    "MESSAGE_TYPES": "tidings.hyperty.message",
    "Address": "tidings.hyperty.addresses",
    "AddressError": "tidings.hyperty.addresses",
    "Delivery": "tidings.hyperty.element",
    "ElementEvent": "tidings.hyperty.element",
    "ElementLimits": "tidings.hyperty.element_limits",
    "ElementStore": "tidings.hyperty.store",
    "Hyperty": "tidings.hyperty.context",
    "HypertyContext": "tidings.hyperty.context",
    "HypertyFactory": "tidings.hyperty.context",
    "HypertyRuntime": "tidings.hyperty.runtime",
    "HypertyRuntimeError": "tidings.hyperty.context",
    "IdentityError": "tidings.hyperty.identity",
    "IdentityProvider": "tidings.hyperty.idp",
    "IdentityVerifier": "tidings.hyperty.identity",
    "Mailboxes": "tidings.hyperty.mailboxes",
    "Message": "tidings.hyperty.message",
    "MessageError": "tidings.hyperty.message",
    "MessageTooLarge": "tidings.hyperty.rules",
    "MessageType": "tidings.hyperty.message",
    "PushElement": "tidings.hyperty.element",
    "PushPlan": "tidings.hyperty.rules",
    "Refused": "tidings.hyperty.element_limits",
    "Registration": "tidings.hyperty.rules",
    "Route": "tidings.hyperty.rules",
    "allocation_url": "tidings.hyperty.addresses",
    "check_response": "tidings.hyperty.message",
    "classify": "tidings.hyperty.rules",
    "connection_url": "tidings.hyperty.addresses",
    "hyperty_url": "tidings.hyperty.addresses",
    "is_cancel": "tidings.hyperty.rules",
    "is_data_object": "tidings.hyperty.addresses",
    "is_hyperty": "tidings.hyperty.addresses",
    "is_invitation": "tidings.hyperty.rules",
    "is_runtime": "tidings.hyperty.addresses",
    "object_url": "tidings.hyperty.addresses",
    "parse_address": "tidings.hyperty.addresses",
    "parse_registration": "tidings.hyperty.rules",
    "plan_push": "tidings.hyperty.rules",
    "push_element_url": "tidings.hyperty.addresses",
    "registry_url": "tidings.hyperty.addresses",
    "runtime_registry_url": "tidings.hyperty.addresses",
    "runtime_url": "tidings.hyperty.addresses",
    "topic_for": "tidings.hyperty.rules",
    "urgency_for": "tidings.hyperty.rules",
    "user_url": "tidings.hyperty.addresses",
}

__all__ = [
    "DEFAULT_TTL",
    "MESSAGE_TYPES",
    "Address",
    "AddressError",
    "Delivery",
    "ElementEvent",
    "ElementLimits",
    "ElementStore",
    "Hyperty",
    "HypertyContext",
    "HypertyFactory",
    "HypertyRuntime",
    "HypertyRuntimeError",
    "IdentityError",
    "IdentityProvider",
    "IdentityVerifier",
    "Mailboxes",
    "Message",
    "MessageError",
    "MessageTooLarge",
    "MessageType",
    "PushElement",
    "PushPlan",
    "Refused",
    "Registration",
    "Route",
    "allocation_url",
    "check_response",
    "classify",
    "connection_url",
    "hyperty_url",
    "is_cancel",
    "is_data_object",
    "is_hyperty",
    "is_invitation",
    "is_runtime",
    "object_url",
    "parse_address",
    "parse_registration",
    "plan_push",
    "push_element_url",
    "registry_url",
    "runtime_registry_url",
    "runtime_url",
    "topic_for",
    "urgency_for",
    "user_url",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tidings.hyperty' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
