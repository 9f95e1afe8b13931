"""JSON structured logs on stderr, each line carrying the current request id, with
credentials redacted from every record of every logger (aiohttp's and amqtt's included)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


REDACTED = "[redacted]"
_SECRETS: list[tuple[re.Pattern[str], str]] = [
    # Authorization schemes: whatever follows the scheme word is a credential.
    (re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[^\s\"',;]+"), rf"\1\2{REDACTED}"),
    # JWTs anywhere, e.g. quoted inside an exception message.
    (re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), REDACTED),
    # API keys.
    (re.compile(r"iotk_[\w-]+"), f"iotk_{REDACTED}"),
    # key=value or "key": "value" with a secret-looking key.
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|api_key|apikey|claim_code|device_key"
            r"|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        rf"\1{REDACTED}",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def redact_record(record: logging.LogRecord) -> None:
    """Rewrites the record in place, before any handler or formatter sees it."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it itself later
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Cached here, redacted: every formatter uses exc_text when it is set.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and isinstance(value, str):
            record.__dict__[key] = redact(value)


def install_redaction() -> None:
    """Redact through the log record factory: it runs for every logger, whoever configured
    its handlers, so a library's log line cannot bypass it."""
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our request log line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("yoyo").setLevel(logging.WARNING)
