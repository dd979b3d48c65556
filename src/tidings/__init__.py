"""Tidings: a complete Web Push system (RFC 8030, RFC 8291, RFC 8292, the W3C Push API)."""

__version__ = "0.1.0"
