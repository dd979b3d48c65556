"""The service's pages and figures: /metrics, /api/stats, /dashboard, /playground, the demo."""

from __future__ import annotations

from tidings.service.web.app import CONTENT_SECURITY_POLICY, WEB_PREFIXES, WebRoutes

__all__ = ["CONTENT_SECURITY_POLICY", "WEB_PREFIXES", "WebRoutes"]
