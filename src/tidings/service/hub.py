"""Which user agents are connected to this node, and handing them messages."""

from __future__ import annotations

from typing import Protocol

from tidings.service.store import StoredMessage


class ConnectedAgent(Protocol):
    """A user agent connection able to take a message without blocking the caller."""

    uaid: str | None

    def offer(self, message: StoredMessage) -> None:
        """Queue a message for delivery on this connection."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection."""


class Hub:
    """The user agents connected to this node, by uaid."""

    def __init__(self) -> None:
        self._agents: dict[str, ConnectedAgent] = {}

    def __len__(self) -> int:
        return len(self._agents)

    def attach(self, uaid: str, agent: ConnectedAgent) -> ConnectedAgent | None:
        """Make `agent` the connection of `uaid`; return the one it replaces."""
        previous = self._agents.get(uaid)
        self._agents[uaid] = agent
        return previous if previous is not agent else None

    def detach(self, uaid: str, agent: ConnectedAgent) -> None:
        """Forget `agent`, unless another connection has taken over the uaid since."""
        if self._agents.get(uaid) is agent:
            del self._agents[uaid]

    def is_connected(self, uaid: str) -> bool:
        """True when the user agent has a connection on this node."""
        return uaid in self._agents

    def offer(self, message: StoredMessage) -> bool:
        """Hand a message to its user agent if connected here; True if it was."""
        agent = self._agents.get(message.uaid)
        if agent is None:
            return False
        agent.offer(message)
        return True

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection (draining before shutdown)."""
        for agent in list(self._agents.values()):
            await agent.close(code, reason)
