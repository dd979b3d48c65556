"""Fixtures for tidings.webpush tests: the published vectors and fresh user-agent keys."""

from __future__ import annotations

from typing import Any

import pytest

from webpush.helpers import UserAgentKeys, load_vectors, make_ua


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return load_vectors()


@pytest.fixture
def ua() -> UserAgentKeys:
    return make_ua()
