"""Fixtures of the hyperty tests (defined in helpers.py)."""

from hyperty.helpers import stack

__all__ = ["stack"]
