"""The `Link` header (RFC 8288), as far as RFC 8030 needs it: targets by relation."""

from __future__ import annotations

import re

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


def link_targets(header: str, relation: str) -> list[str]:
    """Every target URI of `header` whose `rel` includes `relation`."""
    found: list[str] = []
    for match in _LINK.finditer(header[:8192]):
        target, params = match.group(1), match.group(2)
        for rel in _REL.finditer(params):
            values = (rel.group(1) or rel.group(2) or "").split()
            if relation in values:
                found.append(target.strip())
                break
    return found


def link_target(header: str, relation: str) -> str | None:
    """The first target of `relation` in a Link header, or None."""
    targets = link_targets(header, relation)
    return targets[0] if targets else None


def link_value(target: str, relation: str) -> str:
    """One Link value: `<target>; rel="relation"`."""
    return f'<{target}>; rel="{relation}"'
