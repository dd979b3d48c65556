"""Logging set-up: readable lines by default, one JSON object per line on request.

Log records may carry `request_id` and `message_id` (passed with `extra=`): the access
line of a push names both, and the delivery and acknowledgement lines (debug level)
name the message, so one message can be followed from its POST to its delivery. With
tracing on, lines also carry `trace_id` (the access line of a push its trace's, any
other line the trace of the span running when it was logged), so logs and traces join.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from tidings import tracing
from tidings.service.http.logsafe import escape as escape  # kept here for its callers
from tidings.service.ids import random_hex

CORRELATION_FIELDS = ("request_id", "message_id", "trace_id")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _correlation(record: logging.LogRecord) -> dict[str, object]:
    """The record's correlation ids; the running span's trace id when it names none."""
    found = {
        name: value
        for name in CORRELATION_FIELDS
        if (value := getattr(record, name, None)) is not None
    }
    if "trace_id" not in found:
        trace_id = tracing.current_trace_id()
        if trace_id is not None:
            found["trace_id"] = trace_id
    return found


def request_id(offered: str | None) -> str:
    """The id of a request: the client's `X-Request-Id` if it is sane, else a new one."""
    if offered and _REQUEST_ID.match(offered):
        return offered
    return random_hex(8)


_JSON_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, correlation ids."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_correlation(record))
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        # json.dumps escapes CR, LF and other C0 controls; these three some viewers
        # also break lines at, so they are escaped too (still the same JSON).
        return json.dumps(document, ensure_ascii=False).translate(_JSON_SEPARATORS)


class TextFormatter(logging.Formatter):
    """The plain format, with correlation ids appended when a record has them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{name}={escape(value)}" for name, value in _correlation(record).items()]
        return f"{line} {' '.join(ids)}" if ids else line


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send logs to stderr at `level`, as text or JSON lines."""
    if fmt not in ("text", "json"):
        raise ValueError("log format must be text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def redact_uaid(uaid: str | None) -> str:
    """A uaid fit for logs: whoever knows a uaid can take over its connection."""
    return "-" if uaid is None else escape(uaid[:8]) + "..."
