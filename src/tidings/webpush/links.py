"""RFC 8030's link relations and the `Link` header (RFC 8288) as far as it needs them.

The service writes these links, the sender and the user agent read them: one
vocabulary, here, for all three.
"""

from __future__ import annotations

import re

__all__ = [
    "REL_PUSH",
    "REL_RECEIPT",
    "REL_SET",
    "WEBPUSH_OPTIONS",
    "link_target",
    "link_targets",
    "link_value",
]

REL_PUSH = "urn:ietf:params:push"
"""The push resource of a subscription: what application servers POST to (§4)."""
REL_SET = "urn:ietf:params:push:set"
"""A subscription set: one monitor for every subscription in it (§4)."""
REL_RECEIPT = "urn:ietf:params:push:receipt"
"""A receipt subscription, in the answer to a push and sent back by the sender (§5.1)."""
WEBPUSH_OPTIONS = "application/webpush-options+json"
"""The subscribe request's content type carrying `{"vapid": key}` (RFC 8292 §4)."""

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


def link_targets(header: str | None, relation: str) -> list[str]:
    """Every target URI of `header` whose `rel` includes `relation` (8 KiB read at most)."""
    found: list[str] = []
    for match in _LINK.finditer((header or "")[:8192]):
        target, params = match.group(1), match.group(2)
        for rel in _REL.finditer(params):
            values = (rel.group(1) or rel.group(2) or "").split()
            if relation in values:
                found.append(target.strip())
                break
    return found


def link_target(header: str | None, relation: str) -> str | None:
    """The first target of `relation` in a Link header, or None."""
    targets = link_targets(header, relation)
    return targets[0] if targets else None


def link_value(target: str, relation: str) -> str:
    """One Link value: `<target>; rel="relation"`."""
    return f'<{target}>; rel="{relation}"'
