"""Shared test set-up: support modules under tests/support are pytest plugins."""

pytest_plugins: list[str] = ["support.firefox", "support.service", "support.node"]
